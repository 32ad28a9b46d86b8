"""report.stable_pair_profile (claim (b), "which are they") against a hand count on a small result table."""

import numpy as np
import pandas as pd

from bayestda.report import stable_pair_profile


def _write(res, method, k, p, mu, train_idx, test_idx):
    for folder, name, values in (("pvalues", f"{method}_k{k}_t_fdr", p), ("mu", f"{method}_k{k}", mu)):
        (res / folder).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(values, index=train_idx, columns=test_idx).to_csv(res / folder / f"{name}.csv")


def _row(table: str, first_cell: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_stable_pair_profile_counts_classes_signs_and_concentration(tmp_path):
    rng = np.random.default_rng(0)
    train_idx, test_idx = np.array([7, 3, 12, 40, 5, 9, 21, 30, 33, 2]), np.array([100, 4, 55, 60, 61, 70])
    train_labels, test_labels = rng.integers(0, 3, 50), rng.integers(0, 3, 120)
    p = rng.uniform(0, 0.2, (10, 6))
    p[0] = 0.01  # training image 7: every pair stable, so it leads the list
    mu = rng.normal(size=(10, 6))
    for method, sign in (("loo-scratch", +1), ("ats", -1)):  # ATS: a negative τ means "helps"
        _write(tmp_path, method, 5, p, mu, train_idx, test_idx)
        text = stable_pair_profile(tmp_path, method, 5, train_labels, test_labels)
        stable = p < 0.05
        same = train_labels[train_idx][:, None] == test_labels[test_idx][None, :]
        per_train = stable.sum(1)
        expect = [stable.sum(), same[stable].mean(), (sign * mu > 0)[stable].mean(), (per_train > 0).sum(),
                  stable.any(0).sum(), per_train.max() / stable.sum(), np.median(np.abs(mu[stable]))]  # fmt: skip
        got = _row(text, "FDR < 0.05")[1:]
        assert [float(g) for g in got] == [float(f"{e:.3g}") for e in expect]
        assert _row(text, "all")[1:3] == ["60", f"{same.mean():.3g}"]
        lead = _row(text, "7")  # train idx 7 has 6 stable pairs, more than any other
        classes, counts = np.unique(test_labels[test_idx], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        partners = ", ".join(f"{classes[i]}×{counts[i]}" for i in order)
        assert lead == ["7", str(train_labels[7]), "6", str(same[0].sum()), str((sign * mu[0] > 0).sum()), partners]
