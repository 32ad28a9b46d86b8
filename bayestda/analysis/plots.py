"""Figures of the analysis steps (3–4; 5, distributional; 6, LDS; 7, mislabel detection), saved as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..core.io import atomic_savefig
from ..methods.registry import label


def save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        atomic_savefig(fig, path)
    plt.close(fig)
    return paths


def mu_sigma_scatter(mu: np.ndarray, sigma: np.ndarray, method: str, stem: Path) -> list[Path]:
    """σ against μ over all pairs; points above the σ = |μ| lines are noise-dominated.

    Left, linear axes (the paper's view), where the few large pairs set the scale. Right, |μ| against σ on
    log axes, where the bulk of the pairs is visible too (zeros are drawn at the smallest positive value).
    """
    mu, sigma = mu.ravel(), sigma.ravel()
    fig, (lin, log) = plt.subplots(1, 2, figsize=(9, 4))
    lin.scatter(mu, sigma, s=2, alpha=0.3, linewidths=0, rasterized=True)
    lim = max(np.abs(mu).max(), sigma.max()) * 1.05 or 1.0
    grid = np.linspace(-lim, lim, 3)
    lin.plot(grid, np.abs(grid), "k--", lw=1, label="σ = |μ|")
    lin.set(xlabel="μ (mean τ)", ylabel="σ (std of τ)")
    lin.legend(loc="upper left")
    abs_mu = np.abs(mu)
    positive = np.concatenate([abs_mu[abs_mu > 0], sigma[sigma > 0]])
    floor = positive.min() if positive.size else 1.0
    x, y = np.maximum(abs_mu, floor), np.maximum(sigma, floor)
    log.scatter(x, y, s=2, alpha=0.2, linewidths=0, rasterized=True)
    ends = [floor, max(x.max(), y.max())]
    log.plot(ends, ends, "k--", lw=1, label="σ = |μ|")
    log.set(xscale="log", yscale="log", xlabel="|μ|", ylabel="σ")
    log.legend(loc="upper left")
    frac = (sigma > abs_mu).mean()
    fig.suptitle(f"{label(method)}: σ > |μ| for {frac:.0%} of pairs")
    fig.tight_layout()
    return save(fig, stem)


def p_value_histograms(p: dict[str, np.ndarray], stem: Path, p_type: str) -> list[Path]:
    """One panel per method: the distribution of per-pair p-values."""
    fig, axes = plt.subplots(1, len(p), figsize=(3 * len(p), 2.8), sharey=True, squeeze=False)
    for ax, (method, values) in zip(axes[0], p.items(), strict=True):
        ax.hist(values.ravel(), bins=np.linspace(0, 1, 21), color="tab:blue")
        ax.axvline(0.05, color="k", ls="--", lw=1)
        ax.set(title=label(method), xlabel=f"p ({p_type})")
    axes[0][0].set_ylabel("train–test pairs")
    fig.tight_layout()
    return save(fig, stem)


def mean_p_vs_checkpoints(mean_p: pd.DataFrame, stem: Path, p_type: str) -> list[Path]:
    """Mean p-value against the number of averaged checkpoints, one line per method."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for method in mean_p.columns:
        ax.plot(mean_p.index, mean_p[method], marker="o", label=label(method))
    ax.set(xlabel="checkpoints averaged per seed (k)", ylabel=f"mean p-value ({p_type})", xticks=list(mean_p.index))
    ax.legend(fontsize=8)
    return save(fig, stem)


def correlation_heatmap(table: pd.DataFrame, title: str, stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    cmap = sns.diverging_palette(197, 24, as_cmap=True, center="light")
    labels = [label(m) for m in table.index]
    sns.heatmap(table.round(2), vmin=-1, vmax=1, cmap=cmap, annot=True, fmt=".2f", square=True, cbar=False, ax=ax,
                xticklabels=labels, yticklabels=labels)  # fmt: skip
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", rotation=45)
    return save(fig, stem)


def predicted_vs_true(
    true: np.ndarray, predicted: dict[str, np.ndarray], measure: str, scores: pd.DataFrame, stem: Path
) -> list[Path]:
    """Distributional TDA: one panel per method, a method's predicted measure against the retrained truth over all
    pairs (log-density hexbins), titled with its Spearman. `scores` holds, per method, `spearman` and `loss units`.
    A method in loss units gets the line y = x; a similarity (its aligned μ, a ranking only) gets its own y scale
    and no line, since no value of it is a loss."""
    ncols = min(5, len(predicted))
    nrows = -(-len(predicted) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.2 * nrows), squeeze=False)
    t = true.ravel()
    for ax, (method, values) in zip(axes.flat, predicted.items(), strict=False):  # the grid may have spare panels
        p = values.ravel()
        ax.hexbin(t, p, gridsize=40, bins="log", mincnt=1, cmap="viridis")
        row = scores.loc[method]
        if row["loss units"]:
            ends = [min(t.min(), p.min()), max(t.max(), p.max())]
            ax.plot(ends, ends, "k--", lw=1)
            ylabel = f"predicted {measure}"
        else:
            ylabel = "aligned μ (not in loss units)"
        ax.set(title=f"{label(method)}: ρ = {row['spearman']:.2f}", xlabel=f"true {measure}", ylabel=ylabel)
    for ax in axes.flat[len(predicted) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return save(fig, stem)


def fixed_seed_by_epoch(by_epoch: pd.DataFrame, stem: Path) -> list[Path]:
    """Per method, the Spearman correlation with LOO-scratch on the same seed against the checkpoint epoch (mean
    over seeds, ± sd). A method with one τ per seed (TracIn: the whole run) is a diamond just right of the last
    epoch, each beside the other, so that none hides behind the lines' last points."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    groups = list(by_epoch.groupby("method", sort=False))
    several_epochs = by_epoch["epoch"].nunique() > 1
    whole_run = [m for m, rows in groups if len(rows) == 1 and several_epochs]
    for method, rows in groups:
        if method in whole_run:
            x = rows["epoch"] + 0.12 * (whole_run.index(method) + 1)
            style = {"marker": "D", "linestyle": "none", "label": f"{label(method)}, whole run"}
        else:
            x, style = rows["epoch"], {"marker": "o", "label": label(method)}
        ax.errorbar(x, rows["mean spearman"], yerr=rows["sd"], capsize=2, **style)
    ax.set(xlabel="checkpoint epoch", ylabel="Spearman with LOO-scratch, same seed",
           xticks=sorted(by_epoch["epoch"].unique()))  # fmt: skip
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save(fig, stem)


def lds_bars(table: pd.DataFrame, ceilings: pd.DataFrame, stem: Path) -> list[Path]:
    """LDS per method, one bar per variant with its bootstrap interval, and each variant's noise ceiling as a dashed
    line of the bar's colour."""
    methods = list(dict.fromkeys(table["method"]))
    variants = list(dict.fromkeys(table["variant"]))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(methods), 3.6))
    x = np.arange(len(methods))
    for i, (variant, color) in enumerate(zip(variants, sns.color_palette(n_colors=len(variants)), strict=True)):
        rows = table[table["variant"] == variant].set_index("method").loc[methods]
        err = np.abs(rows[["low", "high"]].to_numpy().T - rows["lds"].to_numpy())
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, rows["lds"], width, yerr=err, capsize=2, color=color,
               label=variant)  # fmt: skip
        ceiling = ceilings.set_index("variant").loc[variant, "ceiling"]
        ax.axhline(ceiling, color=color, ls="--", lw=1, label=f"{variant} noise ceiling")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, [label(m) for m in methods], rotation=45, ha="right")
    ax.set(ylabel="LDS (Spearman over subsets)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save(fig, stem)


def mislabel_roc(rankings: dict[str, dict[str, np.ndarray]], flipped: np.ndarray, stem: Path) -> list[Path]:
    """Mislabel detection: one panel per method, the ROC curve of each ranking (mean, one sample, z-score)."""
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, len(rankings), figsize=(3.2 * len(rankings), 3.2), squeeze=False, sharey=True)
    for ax, (method, ranks) in zip(axes[0], rankings.items(), strict=True):
        for name, score in ranks.items():
            fpr, tpr, _ = roc_curve(flipped, np.nan_to_num(score, posinf=1e300, neginf=-1e300))
            ax.plot(fpr, tpr, label=name)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=label(method), xlabel="false positive rate")
    axes[0][0].set_ylabel("flipped labels found")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save(fig, stem)
