"""The linear datamodeling score (LDS; Ilyas et al. 2022, Park et al. 2023) with its noise, and its noise ceiling.

**Ground truth** (`subset_retrains.py`): for every seed s, its retrains on M random subsets S_1..S_M of the training
data (the same subsets for every seed), with test losses L_s(S_m; z). Each is averaged over the last k checkpoint
epochs, as the scores are (τ̄_s, the mean over seed s's last k checkpoints; a method with one τ per seed has only
its one).

**Prediction.** A method predicts the retrain on S_m to change the loss by the sum of its scores over the points
S_m leaves out, signs aligned so that removing a helpful point raises the loss: g_s(S_m; z) = Σ_{j∉S_m} a·τ̄_s(j, z),
with a the method's "helps" sign. (The usual Σ_{j∈S_m} with the opposite sign differs by a constant per test point,
so every rank, and the LDS, is the same.) The LDS of a test point is the Spearman correlation over the M subsets of
prediction and retrained loss; a table entry is its mean over the test points.

**Three variants** (each with a bootstrap confidence interval over test points):
- `per-seed`: seed s's scores against seed s's retrains, the Spearman averaged over seeds, then over test points;
- `mean`: μ = mean_s τ̄_s against the seed-mean loss mean_s L_s(S_m; z): the d-TDA reading, "LDS measures mean
  influence";
- the **noise ceiling** of each. `per-seed`: the Spearman per test point between two seeds' retrained losses on the
  same subsets, averaged over test points and seed pairs: what the subsets alone predict of a seed's outcome, so it
  bounds every prediction that ignores the seed (a method that uses the seed's own run, LOO for one, can pass it).
  `mean`: the split-half reliability of the seed-mean outputs: the Spearman per test point between the means over two
  halves of the seeds, averaged over test points and every split into halves, then Spearman–Brown corrected to the
  whole ensemble, 2r/(1 + r). Each method's LDS is also reported as a share of its variant's ceiling.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..core.io import atomic_write_csv, atomic_write_json
from ..runs.subset_retrains import SubsetRetrains
from . import plots
from .results import open_results, step_inputs
from .statistics import Experiment, average_last_checkpoints

VARIANTS = ("per-seed", "mean")
MAX_SPLITS = 256  # split-half: every split of the seeds into halves up to this many, else this many at random


# ----------------------------------------------------------------------------- the maths


def spearman_along(a: np.ndarray, b: np.ndarray, axis: int = 0) -> np.ndarray:
    """The Spearman correlation of a and b along `axis` (the subsets), for every other index: the Pearson
    correlation of average ranks, as scipy.stats.spearmanr. NaN where either side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return stats.pearsonr(stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis), axis=axis).statistic


def predictions(tau: np.ndarray, members: np.ndarray, sign: int) -> np.ndarray:
    """[..., M, m]: each subset's predicted loss change, Σ over the points it leaves out of sign·τ, from τ [..., n, m]
    and members [M, n] (bool)."""
    return np.einsum("kj,...jz->...kz", (~members).astype(tau.dtype), sign * tau)


def lds_per_seed(tau: np.ndarray, losses: np.ndarray, members: np.ndarray, sign: int) -> np.ndarray:
    """[m]: per test point, the mean over seeds of Spearman(g_s, L_s) over the subsets; τ [S, n, m], losses [S, M, m]."""
    return np.nanmean(spearman_along(predictions(tau, members, sign), losses, axis=1), axis=0)


def lds_mean(tau: np.ndarray, losses: np.ndarray, members: np.ndarray, sign: int) -> np.ndarray:
    """[m]: per test point, Spearman over the subsets of the prediction from μ = mean_s τ_s with mean_s L_s."""
    return spearman_along(predictions(tau.mean(0), members, sign), losses.mean(0), axis=0)


def ceiling_per_seed(losses: np.ndarray) -> np.ndarray:
    """[m]: per test point, the mean over seed pairs of Spearman(L_s, L_s') over the subsets; losses [S, M, m]."""
    pairs = list(itertools.combinations(range(len(losses)), 2))
    return np.nanmean([spearman_along(losses[s], losses[t], axis=0) for s, t in pairs], axis=0)


def seed_splits(n_seeds: int, rng: np.random.Generator, max_splits: int = MAX_SPLITS) -> list[np.ndarray]:
    """Halves of the seeds (the first of each split; it holds seed 0, so no split is counted twice): all of them,
    or `max_splits` drawn at random when there are more."""
    half = n_seeds // 2
    every = (np.array(c) for c in itertools.combinations(range(n_seeds), half) if 0 in c or 2 * half != n_seeds)
    every = list(itertools.islice(every, max_splits + 1))
    if len(every) <= max_splits:
        return every
    return [np.sort(rng.choice(n_seeds, half, replace=False)) for _ in range(max_splits)]


def split_half(losses: np.ndarray, rng: np.random.Generator, max_splits: int = MAX_SPLITS) -> np.ndarray:
    """[m]: per test point, the mean over splits of the seeds into halves A, B of Spearman(mean_A L, mean_B L)."""
    rows = []
    for first in seed_splits(len(losses), rng, max_splits):
        rest = np.setdiff1d(np.arange(len(losses)), first)
        rows.append(spearman_along(losses[first].mean(0), losses[rest].mean(0), axis=0))
    return np.nanmean(rows, axis=0)


def spearman_brown(r, factor: float = 2.0):
    """The reliability of a mean over `factor` times as many seeds as the one whose reliability is r."""
    return factor * r / (1 + (factor - 1) * r)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _share_per_seed(lds, ceiling, axis=-1):
    return np.mean(lds, axis=axis) / np.mean(ceiling, axis=axis)


def _corrected(half, axis=-1):
    return spearman_brown(np.mean(half, axis=axis))


def _share_mean(lds, half, axis=-1):
    return np.mean(lds, axis=axis) / spearman_brown(np.mean(half, axis=axis))


def bootstrap(data: tuple[np.ndarray, ...], statistic, n_resamples: int, seed: int, level: float) -> tuple:
    """(value, low, high): `statistic` of the test points and its percentile interval over test points resampled
    with replacement (scipy.stats.bootstrap, paired when there are several arrays)."""
    value = float(statistic(*data))
    if n_resamples == 0:
        return value, np.nan, np.nan
    res = stats.bootstrap(data, statistic, n_resamples=n_resamples, paired=len(data) > 1, vectorized=True,
                          confidence_level=level, method="percentile", rng=np.random.default_rng(seed))  # fmt: skip
    return value, float(res.confidence_interval.low), float(res.confidence_interval.high)


# ----------------------------------------------------------------------------- an experiment


def per_test_point(exp: Experiment, retrains: SubsetRetrains, k: int, seed: int = 0) -> pd.DataFrame:
    """Every per-test-point quantity, indexed by test_idx: `<method>/<variant>` for each method, and the ceilings
    `ceiling/per-seed` and `split-half/mean` (uncorrected)."""
    losses = retrains.losses[:, :, -k:, :].mean(2)  # [S, M, m]
    members = retrains.members
    columns = {}
    for method in exp.methods:
        tau = average_last_checkpoints(exp.scores(method), exp.k_for(method, k))  # [S, n, m]
        columns[f"{method}/per-seed"] = lds_per_seed(tau, losses, members, exp.signs[method])
        columns[f"{method}/mean"] = lds_mean(tau, losses, members, exp.signs[method])
    columns["ceiling/per-seed"] = ceiling_per_seed(losses)
    columns["split-half/mean"] = split_half(losses, np.random.default_rng(seed))
    return pd.DataFrame(columns, index=pd.Index(exp.test_idx, name="test_idx"))


def lds_table(frame: pd.DataFrame, methods: list[str], n_resamples: int = 1000, level: float = 0.95,
              seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """(per method and variant: LDS, its share of the ceiling, each with a bootstrap interval over test points;
    per variant: the ceiling and its interval). Test points where a quantity is undefined (a constant loss over the
    subsets) are left out of every entry, and counted."""
    usable = frame.dropna()
    ceilings = {"per-seed": (usable["ceiling/per-seed"].to_numpy(), _mean, _share_per_seed),
                "mean": (usable["split-half/mean"].to_numpy(), _corrected, _share_mean)}  # fmt: skip
    boot = {"n_resamples": n_resamples, "seed": seed, "level": level}
    ceiling_rows = []
    for variant, (values, statistic, _) in ceilings.items():
        value, lo, hi = bootstrap((values,), statistic, **boot)
        ceiling_rows.append({"variant": variant, "ceiling": value, "low": lo, "high": hi})
    rows = []
    for method in methods:
        for variant in VARIANTS:
            lds = usable[f"{method}/{variant}"].to_numpy()
            ceiling, _, share = ceilings[variant]
            value, lo, hi = bootstrap((lds,), _mean, **boot)
            s, s_lo, s_hi = bootstrap((lds, ceiling), share, **boot)
            rows.append({"method": method, "variant": variant, "lds": value, "low": lo, "high": hi,
                         "share_of_ceiling": s, "share_low": s_lo, "share_high": s_hi,
                         "test_points": len(usable), "left_out": len(frame) - len(usable)})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(ceiling_rows)


# ----------------------------------------------------------------------------- the step


def write_lds(exp: Experiment, retrains: SubsetRetrains, k: int, n_resamples: int = 1000, level: float = 0.95,
              overwrite: bool = False):  # fmt: skip
    """results/<experiment>/lds/: per_test_point.csv, lds.csv, ceilings.csv, summary.json and figures/. None if up to
    date."""
    digest = hashlib.sha1(retrains.losses.tobytes() + retrains.members.tobytes()).hexdigest()
    inputs = step_inputs(exp, num_ckpts=k, retrains_digest=digest, bootstrap=n_resamples, level=level)
    if (out := open_results(exp, "lds", inputs, "LDS", overwrite)) is None:
        return None
    frame = per_test_point(exp, retrains, k)
    atomic_write_csv(frame, out / "per_test_point.csv", float_format="%.6f")
    table, ceilings = lds_table(frame, exp.methods, n_resamples, level)
    atomic_write_csv(table.set_index(["method", "variant"]), out / "lds.csv", float_format="%.4f")
    atomic_write_csv(ceilings.set_index("variant"), out / "ceilings.csv", float_format="%.4f")
    summary = {"k": k, "seeds": len(exp.seeds), "test_points": len(exp.test_idx), **retrains.subsets,
               "subset_size": int(retrains.members[0].sum()), "n_train": len(exp.train_idx),
               "bootstrap": n_resamples, "level": level,
               "ceilings": {r["variant"]: r["ceiling"] for r in ceilings.to_dict("records")}}  # fmt: skip
    atomic_write_json(summary, out / "summary.json")
    plots.lds_bars(table, ceilings, out / "figures" / "lds")
    atomic_write_json({"inputs": inputs}, out / "manifest.json")
    return out


def console_summary(out) -> str:
    """The printed end of the step: LDS [interval] and share of the ceiling, per method and variant."""
    table = pd.read_csv(out / "lds.csv")
    ceilings = pd.read_csv(out / "ceilings.csv").set_index("variant")
    summary = json.loads((out / "summary.json").read_text())
    table["cell"] = [f"{r.lds:.3f} [{r.low:.3f}, {r.high:.3f}] = {r.share_of_ceiling:.0%}" for r in table.itertuples()]
    wide = table.pivot(index="method", columns="variant", values="cell")[list(VARIANTS)]
    ceiling = ", ".join(f"{v} {r.ceiling:.3f} [{r.low:.3f}, {r.high:.3f}]" for v, r in ceilings.iterrows())
    return "\n".join([
        f"LDS over {summary['lds_subsets']} subsets of {summary['subset_size']}/{summary['n_train']} (k={summary['k']}, "
        f"{summary['seeds']} seeds, {summary['test_points']} test points), [{summary['level']:.0%} interval] "
        "= share of the noise ceiling:",
        wide.to_string(),
        f"Noise ceilings: {ceiling}",
    ])  # fmt: skip
