"""Step 4's maths: method-by-method Pearson and Spearman correlations of per-pair quantities.

Quantities are μ, σ, the p-values, and z = μ/σ. The original's "p" correlation was in fact of
z, so z is kept to compare with it. Every matrix comes in two versions:
- raw: each method's native sign;
- aligned: μ and z multiplied by the method's `sign`, so that "z_j helps z" is positive for every
  method. σ and p carry no sign, so their two versions are equal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .statistics import PairStats

QUANTITIES = ("mu", "sigma", "p", "p_t", "z")
SIGNED = {"mu", "z"}


def quantity(s: PairStats, name: str) -> np.ndarray:
    if name == "z":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(s.sigma > 0, s.mu / s.sigma, 0.0)
    return {"mu": s.mu, "sigma": s.sigma, "p": s.p["paper"], "p_t": s.p["t"]}[name]


def pearson_matrix(rows: np.ndarray) -> np.ndarray:
    """Correlation between the rows of a [methods, pairs] array."""
    return np.corrcoef(rows)


def spearman_matrix(rows: np.ndarray) -> np.ndarray:
    """Spearman = Pearson of average ranks (ties averaged, as scipy.stats.spearmanr)."""
    return np.corrcoef(stats.rankdata(rows, axis=1))


def correlation_tables(
    per_method: dict[str, PairStats], signs: dict[str, int]
) -> dict[tuple[str, str, str], pd.DataFrame]:
    """{(kind, quantity, version): methods × methods DataFrame} for kind ∈ {pearson, spearman}."""
    methods = list(per_method)
    tables = {}
    for q in QUANTITIES:
        raw = np.stack([quantity(per_method[m], q).ravel() for m in methods])
        for version in ("raw", "aligned"):
            rows = raw * np.array([signs[m] for m in methods])[:, None] if version == "aligned" and q in SIGNED else raw
            for kind, fn in (("pearson", pearson_matrix), ("spearman", spearman_matrix)):
                tables[(kind, q, version)] = pd.DataFrame(fn(rows), index=methods, columns=methods)
    return tables
