"""Step 3: τ as a random variable: per-pair mean μ, std σ and p-values across posterior samples.

For k = 1..5 (as in the paper), each seed's τ is averaged over its last k checkpoints, and μ, σ
(ddof=1, as pandas in the original) are taken across seeds. Two p-values per pair:
- `paper`: 2·Φ(−|μ/σ|), exactly the original's. It uses σ rather than σ/√n, so it is a
  signal-to-noise score, not a test of the mean.
- `t`: a one-sample t-test of H0: E[τ] = 0 across seeds, plus Benjamini–Hochberg adjusted values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .data import get_task
from .errors import UserError
from .methods.registry import score_command
from .paths import experiment_name, read_seeds, results_dir, score_file
from .scores import load_scores

P_TYPES = ("paper", "t")
ALPHA = 0.05


# ----------------------------------------------------------------------------- the maths


def average_last_checkpoints(scores: np.ndarray, k: int) -> np.ndarray:
    """[seeds, ckpts, train, test] -> [seeds, train, test]: each seed's mean over its last k checkpoints."""
    return scores[:, -k:].mean(axis=1)


def mean_and_std(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ and σ (sample std, ddof=1) across seeds (axis 0)."""
    return per_seed.mean(axis=0), per_seed.std(axis=0, ddof=1)


def p_values_paper(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """2·Φ(−|μ/σ|). σ = 0 gives p = 0 when μ ≠ 0 (pure signal) and p = 1 when μ = 0 (nothing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(mu) / sigma
    z = np.where((sigma == 0) & (mu == 0), 0.0, z)
    return 2 * stats.norm.sf(z)


def p_values_ttest(per_seed: np.ndarray) -> np.ndarray:
    """Two-sided one-sample t-test of E[τ] = 0 across seeds (axis 0); constant zero τ gives p = 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.ttest_1samp(per_seed, 0.0, axis=0).pvalue
    return np.where(np.isnan(p), 1.0, p)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values over all pairs of one method and k."""
    return stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)


@dataclass
class PairStats:
    """Everything step 3 derives for one method and one k, each [train, test]."""

    mu: np.ndarray
    sigma: np.ndarray
    p: dict[str, np.ndarray]  # "paper", "t"
    p_fdr: dict[str, np.ndarray]


def pair_stats(scores: np.ndarray, k: int) -> PairStats:
    per_seed = average_last_checkpoints(scores, k)
    mu, sigma = mean_and_std(per_seed)
    p = {"paper": p_values_paper(mu, sigma), "t": p_values_ttest(per_seed)}
    return PairStats(mu, sigma, p, {name: fdr_bh(v) for name, v in p.items()})


def summary_rows(method: str, k: int, s: PairStats, n_seeds: int) -> list[dict]:
    return [
        {
            "method": method,
            "num_ckpts": k,
            "p_type": name,
            "mean_p": s.p[name].mean(),
            "median_p": np.median(s.p[name]),
            "frac_p_below_0.05": (s.p[name] < ALPHA).mean(),
            "frac_p_fdr_below_0.05": (s.p_fdr[name] < ALPHA).mean(),
            "frac_sigma_above_abs_mu": (s.sigma > np.abs(s.mu)).mean(),
            "n_pairs": s.mu.size,
            "n_seeds": n_seeds,
        }
        for name in P_TYPES
    ]


# ----------------------------------------------------------------------------- loading an experiment


@dataclass
class Experiment:
    """The validated scores of one experiment (model, task, n) for chosen methods and seeds."""

    model: str
    task: str
    num_per_class: int
    out_root: Path
    methods: list[str]
    seeds: list[int]
    train_idx: np.ndarray
    test_idx: np.ndarray
    n_ckpts: int
    stacked: dict[str, np.ndarray]  # method -> float32 [seeds, ckpts, train, test]
    signs: dict[str, int]
    configs: dict[str, dict]

    @property
    def name(self) -> str:
        return experiment_name(self.model, self.task, self.num_per_class)

    @property
    def results_dir(self) -> Path:
        return results_dir(self.out_root, self.model, self.task, self.num_per_class)

    def scores(self, method: str) -> np.ndarray:
        """[seeds, ckpts, train, test] in float64 (the last n_ckpts checkpoints of every seed)."""
        return self.stacked[method].astype(np.float64)

    def input_digest(self) -> str:
        """Changes whenever any score, index, seed or method config changes."""
        h = hashlib.sha1(f"{self.methods}{self.seeds}".encode())
        h.update(self.train_idx.tobytes() + self.test_idx.tobytes())
        for method in self.methods:
            h.update(json.dumps(self.configs[method], sort_keys=True, default=str).encode())
            h.update(np.ascontiguousarray(self.stacked[method]).tobytes())
        return h.hexdigest()


def parse_experiment_name(name: str) -> tuple[str, str, int]:
    """`cnn3-deinit_mnist3_50pc` -> ("cnn3-deinit", "mnist3", 50)."""
    parts = name.split("_")
    if len(parts) != 3 or not parts[2].endswith("pc") or not parts[2][:-2].isdigit():
        raise UserError(f"--experiment {name!r} is not of the form <model>_<task>_<n>pc, e.g. cnn_mnist3_50pc")
    get_task(parts[1])
    return parts[0], parts[1], int(parts[2][:-2])


def load_experiment(
    model: str,
    task: str,
    num_per_class: int,
    out_root: Path,
    methods: list[str],
    seeds: list[int] | None = None,
    allow_partial: bool = False,
) -> Experiment:
    """Find and validate every (method, seed) score file; clear errors for whatever is missing or off."""
    all_seeds = read_seeds()
    seeds = list(seeds) if seeds is not None else all_seeds
    path = {m: {s: score_file(out_root, model, m, task, num_per_class, s) for s in seeds} for m in methods}
    missing = {m: [s for s in seeds if not path[m][s].is_file()] for m in methods}
    complete = [s for s in seeds if all(s not in missing[m] for m in methods)]
    if any(missing.values()) and not (allow_partial and complete):
        lines = []
        for m, miss in missing.items():
            if miss:
                cmd = score_command(model, m, task, num_per_class)
                lines.append(f"{m} for seeds {','.join(map(str, miss))} (make them with: {cmd})")
        hint = "" if allow_partial else "; or pass --allow_partial to use only the seeds that have every method"
        raise UserError(f"missing score files under {out_root / 'tda_scores' / model}: " + "; ".join(lines) + hint)
    if len(complete) < len(seeds):
        print(f"warning: --allow_partial: using only the {len(complete)} seeds with every method: {complete}")
    seeds = complete
    if len(seeds) < 2:
        raise UserError(f"{len(seeds)} seed(s) available, but σ and p-values need at least 2 seeds per pair")

    first = None
    signs, configs, per_seed = {}, {}, {m: [] for m in methods}
    for m in methods:
        for s in seeds:
            rec = load_scores(path[m][s])
            if rec["method"] != m or rec["seed"] != s:
                raise UserError(
                    f"{path[m][s]} holds method {rec['method']!r}, seed {rec['seed']} (expected {m!r}, {s})"
                )
            if first is None:
                first = (path[m][s], rec["train_idx"], rec["test_idx"])
            elif not (torch.equal(rec["train_idx"], first[1]) and torch.equal(rec["test_idx"], first[2])):
                raise UserError(
                    f"{path[m][s]} scores other train/test indices (or order) than {first[0]}; "
                    "all methods and seeds must share one subset: recompute the odd one with --overwrite"
                )
            per_seed[m].append(rec["scores"].numpy())
            signs[m], configs[m] = rec["sign"], rec["config"]
    n_ckpts = min(a.shape[0] for arrays in per_seed.values() for a in arrays)
    stacked = {m: np.stack([a[-n_ckpts:] for a in arrays]) for m, arrays in per_seed.items()}
    return Experiment(
        model, task, num_per_class, out_root, list(methods), seeds,
        first[1].numpy(), first[2].numpy(), n_ckpts, stacked, signs, configs,
    )  # fmt: skip


# ----------------------------------------------------------------------------- step 3


def pair_frame(values: np.ndarray, exp: Experiment) -> pd.DataFrame:
    """Train indices as rows, test indices as columns: the dataset indices label every pair."""
    return pd.DataFrame(values, index=pd.Index(exp.train_idx, name="train_idx"), columns=exp.test_idx)
