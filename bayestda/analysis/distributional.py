"""Distributional training data attribution (Mlodozeniec et al. 2025): how the distribution of a test loss over
training runs changes when a training point is removed, and how well each method predicts it.

**Ground truth.** For seed s, L̄_s(z) is the test loss of its trained model and L̄_s∖j(z) = L̄_s(z) + τ_s(j, z) that
of its `loo-scratch` retrain without z_j (the same initialisation and batch order), both averaged over the last k
checkpoint epochs. Over the seeds, each pair (j, z) then has two samples, {L̄_s} and {L̄_s∖j}, and:
- Δmean = mean_s L̄_s∖j − mean_s L̄_s, which is μ of loo-scratch's τ;
- Δstd = std_s L̄_s∖j − std_s L̄_s (sample standard deviations);
- W1 and W2, the 1-D Wasserstein distances between the two equal-size samples (sorted matching);
- KS, the two-sample Kolmogorov–Smirnov statistic.

**Predictions.** A method in loss units (`Method.removal`: ud, the LOO variants, ATS, the IF solvers) predicts
L̄_s∖j ≈ L̄_s + r·τ̂_s, r its removal factor (1 for ud and LOO, −1 for ATS, −1/n for IF, whose τ is −∇L_jᵀH⁻¹∇L(z)
of the mean loss). The same four measures of the predicted sample are scored against the true ones over all pairs:
the Spearman and Pearson correlations, and the top-1% overlap (of the 1% of pairs with the largest true value, in
absolute value for the signed Δmean and Δstd, the share that the method also puts in its top 1%). Similarities
(GD, GC, TRAK, TracIn) predict no loss; only their ranking of Δmean (= their μ, signs aligned) is scored, and an
absolute measure asked of one is refused.

**Fixed seed against across seeds.** Per seed and checkpoint epoch, the Spearman correlation of τ̂_s with
loo-scratch's τ_s of the same seed and epoch, averaged over seeds, beside the correlation of μ̂ with μ: a method can
agree with each retrain and still disagree with their mean, or the other way round.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from ..core.errors import UserError
from ..core.io import atomic_write_csv, atomic_write_json
from ..methods import registry
from ..models import families
from ..runs.samples import load_seed_samples
from ..training.loop import evaluate
from . import plots
from .report import fixed_sample_spearman
from .results import open_results, step_inputs
from .statistics import Experiment, average_last_checkpoints


def truth_method() -> str:
    """The ground truth the measures are taken from: the registry's first (`loo-scratch`, retrains that share each
    seed's initialisation and batch order)."""
    return registry.ground_truths()[0]


MEASURES = ("dmean", "dstd", "w1", "w2", "ks")
SIGNED = ("dmean", "dstd")  # ranked by absolute value for the top-1% overlap
TOP_SHARE = 0.01


# ----------------------------------------------------------------------------- the measures


def ks_statistic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-sample KS statistic along axis 0 of two equal-size samples [S, ...]: max_t |F_a(t) − F_b(t)|, ties
    counted as scipy does (the empirical CDFs are compared only after every value equal to t)."""
    s = a.shape[0]
    values = np.concatenate([a, b], axis=0)
    step = np.concatenate([np.ones_like(a), -np.ones_like(b)], axis=0)
    order = np.argsort(values, axis=0, kind="stable")
    values, step = np.take_along_axis(values, order, 0), np.take_along_axis(step, order, 0)
    diff = np.cumsum(step, axis=0)
    last_of_tie = np.ones_like(values, dtype=bool)
    last_of_tie[:-1] = values[1:] != values[:-1]
    return np.max(np.abs(np.where(last_of_tie, diff, 0.0)), axis=0) / s


def measures(before: np.ndarray, after: np.ndarray) -> dict[str, np.ndarray]:
    """The change from `before` to `after`, two samples over seeds [S, ...] of the same shape: Δmean, Δstd, W1, W2,
    KS, each [...]."""
    if before.shape != after.shape or before.shape[0] < 2:
        raise ValueError(f"two samples of at least 2 seeds and one shape expected, got {before.shape}, {after.shape}")
    gap = np.sort(after, axis=0) - np.sort(before, axis=0)
    return {
        "dmean": after.mean(0) - before.mean(0),
        "dstd": after.std(0, ddof=1) - before.std(0, ddof=1),
        "w1": np.abs(gap).mean(0),
        "w2": np.sqrt(np.square(gap).mean(0)),
        "ks": ks_statistic(before, after),
    }


# ----------------------------------------------------------------------------- the inputs


def base_losses(exp: Experiment, data_root, k: int) -> np.ndarray:
    """[seeds, m] test losses of each seed's trained checkpoints, averaged over the last k, in loo-scratch's loss
    dtype (the losses its τ was measured from)."""
    dtype = getattr(torch, exp.configs[truth_method()].get("loss_dtype", "float32"))
    out = []
    for seed in tqdm(exp.seeds, desc=f"base losses {exp.name}", unit="seed", leave=False):
        samples = load_seed_samples(exp.model, exp.task, exp.num_per_class, seed, exp.out_root, data_root)
        if not np.array_equal(np.asarray(samples.test.idx), exp.test_idx):
            raise UserError(f"the test subset of seed {seed}'s checkpoints is not the one its score files scored")
        loss = families.loss(samples.configs[0])
        losses = torch.stack([evaluate(m, samples.test, loss, dtype)[0] for m in samples.models(torch.device("cpu"))])
        out.append(losses[-k:].double().mean(0).numpy())
    return np.stack(out)


def check_truth(exp: Experiment) -> None:
    if truth_method() not in exp.methods:
        raise UserError(f"the distributional ground truth is {truth_method()}'s retrains, which --methods lacks; add it (and "
                        f"make its score files with: python run_experiment.py --model {exp.model} --task {exp.task} "
                        f"--num_per_class {exp.num_per_class} --methods {truth_method()})")  # fmt: skip


def removal_factor(method: str, n_train: int) -> float | None:
    factor = registry.get(method).removal
    return None if factor is None else factor(n_train)


def check_measures(exp: Experiment, methods: list[str], asked: list[str]) -> None:
    """Refuse an absolute measure (anything but the ranking of Δmean) of a method that is not in loss units."""
    absolute = [m for m in asked if m != "dmean"]
    for method in methods:
        if absolute and removal_factor(method, len(exp.train_idx)) is None:
            raise UserError(f"{method} is not in loss units (its τ is a similarity), so it predicts no distribution of "
                            f"losses and has no {', '.join(absolute)}; drop it from --methods or ask only "
                            "--measures dmean (its ranking)")  # fmt: skip


# ----------------------------------------------------------------------------- the analysis


def _per_seed(exp: Experiment, method: str, k: int) -> np.ndarray:
    """[seeds, n, m] τ averaged over the last k checkpoints (k = 1 for a method with one τ per seed)."""
    return average_last_checkpoints(exp.scores(method), exp.k_for(method, k))


def ground_truth(exp: Experiment, base: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each measure [n, m] between {L̄_s} and {L̄_s∖j} over the seeds."""
    tau = _per_seed(exp, truth_method(), k)
    before = np.broadcast_to(base[:, None, :], tau.shape)
    return measures(before, before + tau)


def top_overlap(pred: np.ndarray, true: np.ndarray, share: float = TOP_SHARE) -> float:
    """Of the `share` of pairs with the largest true values, the fraction also among the largest predicted ones."""
    top = max(1, round(share * true.size))
    t = np.argpartition(-true.ravel(), top - 1)[:top]
    p = np.argpartition(-pred.ravel(), top - 1)[:top]
    return len(np.intersect1d(t, p)) / top


def predicted_measures(exp: Experiment, base: np.ndarray, method: str, k: int) -> dict[str, np.ndarray]:
    """A method's measures [n, m] from its predicted sample {L̄_s + r·τ̂_s}; for a similarity only its ranking of
    Δmean: μ with the sign that makes "helps" (its removal raises the loss) positive."""
    tau = _per_seed(exp, method, k)
    factor = removal_factor(method, len(exp.train_idx))
    if factor is None:
        return {"dmean": tau.mean(0) * exp.signs[method]}
    before = np.broadcast_to(base[:, None, :], tau.shape)
    return measures(before, before + factor * tau)


def prediction_scores(exp: Experiment, truth: dict, predicted: dict[str, dict], asked: list[str]) -> pd.DataFrame:
    """Per method and measure: Spearman and Pearson between predicted (`predicted_measures` of each method) and true
    over all pairs, and the top-1% overlap. A similarity is scored on the ranking of Δmean only (its aligned μ; no
    Pearson)."""
    rows = []
    for method, pred in predicted.items():
        factor = removal_factor(method, len(exp.train_idx))
        for measure in [m for m in asked if m in pred]:  # a similarity has Δmean only
            p, t = pred[measure].ravel(), truth[measure].ravel()
            rank = np.abs if measure in SIGNED else (lambda x: x)
            rows.append({
                "method": method, "measure": measure, "loss units": factor is not None,
                "spearman": stats.spearmanr(p, t).statistic,
                "pearson": stats.pearsonr(p, t).statistic if factor is not None else np.nan,
                "top1pct_overlap": top_overlap(rank(p), rank(t)),
            })  # fmt: skip
    return pd.DataFrame(rows)


def truth_overlap(truth: dict) -> float:
    """The d-TDA paper's point: how much the top 1% of pairs by |Δmean| and by W2 overlap in the ground truth."""
    return top_overlap(np.abs(truth["dmean"]), truth["w2"])


def fixed_seed_view(exp: Experiment, methods: list[str], k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per method and checkpoint epoch: mean and sd over seeds of Spearman(τ̂_s,e, τ_s,e of loo-scratch);
    per method: the mean of those over epochs beside Spearman(μ̂, μ) at k), signs aligned to "helps"."""
    mu_truth = _per_seed(exp, truth_method(), k).mean(0).ravel()
    by_epoch, summary = [], []
    for method in methods:
        rhos = fixed_sample_spearman(exp, method, truth_method())  # [epochs counted from the last, seeds]
        for j, per_seed in enumerate(rhos, start=1):
            by_epoch.append({"method": method, "epoch": exp.epochs[-j], "seeds": len(per_seed),
                             "mean spearman": float(np.mean(per_seed)), "sd": float(np.std(per_seed, ddof=1))})  # fmt: skip
        mu = _per_seed(exp, method, k).mean(0).ravel() * exp.signs[method] * exp.signs[truth_method()]
        summary.append({"method": method, "fixed-seed spearman (mean over seeds and epochs)": float(np.mean(rhos)),
                        f"spearman of mu with {truth_method()}'s (k={k})": stats.spearmanr(mu, mu_truth).statistic})  # fmt: skip
    return pd.DataFrame(by_epoch).sort_values(["method", "epoch"]), pd.DataFrame(summary)


# ----------------------------------------------------------------------------- the step


def write_distributional(exp: Experiment, base: np.ndarray, k: int, asked: list[str], overwrite: bool = False):
    """results/<experiment>/distributional/: ground_truth.csv (every pair's true measures), scores.csv,
    fixed_seed_by_epoch.csv, fixed_vs_across.csv, summary.json and figures/. None if up to date."""
    inputs = step_inputs(exp, num_ckpts=k, measures=asked, base_digest=hashlib.sha1(base.tobytes()).hexdigest())
    if (out := open_results(exp, "distributional", inputs, "distributional", overwrite)) is None:
        return None
    truth = ground_truth(exp, base, k)
    predicted = [m for m in exp.methods if m != truth_method()]
    frame = pd.DataFrame({m: v.ravel() for m, v in truth.items()})
    frame.insert(0, "test_idx", np.tile(exp.test_idx, len(exp.train_idx)))
    frame.insert(0, "train_idx", np.repeat(exp.train_idx, len(exp.test_idx)))
    atomic_write_csv(frame.set_index(["train_idx", "test_idx"]), out / "ground_truth.csv")
    predictions = {m: predicted_measures(exp, base, m, k) for m in predicted}
    scores = prediction_scores(exp, truth, predictions, asked)
    atomic_write_csv(scores.set_index(["method", "measure"]), out / "scores.csv", float_format="%.4f")
    by_epoch, versus = fixed_seed_view(exp, predicted, k)
    atomic_write_csv(by_epoch.set_index(["method", "epoch"]), out / "fixed_seed_by_epoch.csv", float_format="%.4f")
    atomic_write_csv(versus.set_index("method"), out / "fixed_vs_across.csv", float_format="%.4f")
    summary = {"k": k, "seeds": len(exp.seeds), "pairs": int(truth["dmean"].size),
               "top1pct_overlap_abs_dmean_w2": truth_overlap(truth),
               "truth_mean": {m: float(np.mean(v)) for m, v in truth.items()}}  # fmt: skip
    atomic_write_json(summary, out / "summary.json")
    for measure in asked:  # one panel per method that has the measure (a similarity: Δmean only)
        if preds := {m: p[measure] for m, p in predictions.items() if measure in p}:
            table = scores[scores["measure"] == measure].set_index("method")
            plots.predicted_vs_true(
                truth[measure], preds, measure, table, out / "figures" / f"predicted_vs_true_{measure}"
            )
    plots.fixed_seed_by_epoch(by_epoch, out / "figures" / "fixed_seed_spearman_by_epoch")
    atomic_write_json({"inputs": inputs}, out / "manifest.json")
    return out


def console_summary(out) -> str:
    """The printed end of the step: the scores table and the ground-truth overlap."""
    scores = pd.read_csv(out / "scores.csv")
    wide = scores.pivot(index="method", columns="measure", values="spearman")
    overlap = scores.pivot(index="method", columns="measure", values="top1pct_overlap")
    summary = json.loads((out / "summary.json").read_text())
    return "\n".join([
        f"Spearman of predicted with true, over {summary['pairs']:,} pairs (k={summary['k']}, {summary['seeds']} seeds):",
        wide.to_string(float_format=lambda x: f"{x:.3f}"),
        "Top-1% overlap:",
        overlap.to_string(float_format=lambda x: f"{x:.3f}"),
        f"Ground truth: the top 1% of pairs by |Δmean| and by W2 overlap {summary['top1pct_overlap_abs_dmean_w2']:.3f}",
    ])  # fmt: skip
