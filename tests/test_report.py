"""report.stable_pair_profile (claim (b), "which are they") against a hand count on a small result table,
report.common_share against an explicit per-group variance decomposition, report.compute_time's columns, and
report.compare_experiments' σ² ratios against numpy on hand-made μ, σ tables."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from bayestda.analysis.report import common_share, common_shift, compare_experiments, compute_time, stable_pair_profile
from bayestda.artifacts.scores import save_scores
from bayestda.core.paths import read_seeds
from bayestda.methods import registry


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


def test_stable_pair_profile_without_stable_pairs_says_so_without_warnings(tmp_path):
    rng = np.random.default_rng(1)
    train_idx, test_idx = np.arange(4), np.arange(5)
    _write(tmp_path, "loo-scratch", 5, rng.uniform(0.2, 1, (4, 5)), rng.normal(size=(4, 5)), train_idx, test_idx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "mean of empty slice" would be one
        text = stable_pair_profile(tmp_path, "loo-scratch", 5, rng.integers(0, 3, 4), rng.integers(0, 3, 5))
    assert _row(text, "FDR < 0.05")[1:] == ["0", "–", "–", "0", "0", "0", "–"]
    assert "Training images with the most stable pairs" not in text


def _between_share_by_loop(taus: list[np.ndarray]) -> float:
    """Between-group sum of squares over the total, one group per (seed, checkpoint, test point), by loops."""
    grand = np.mean(np.concatenate([t.ravel() for t in taus]))
    between = total = 0.0
    for tau in taus:
        for c in range(tau.shape[0]):
            for t in range(tau.shape[2]):
                group = tau[c, :, t].astype(np.float64)
                between += len(group) * (group.mean() - grand) ** 2
                total += np.sum((group - grand) ** 2)
    return between / total


def test_common_share_equals_the_between_group_share():
    rng = np.random.default_rng(1)
    shift = rng.normal(size=(2, 5, 1, 7))  # one offset per (seed, checkpoint, test point)
    taus = list(shift + 0.7 * rng.normal(size=(2, 5, 6, 7)))
    expect = _between_share_by_loop(taus)
    assert 0.3 < expect < 0.9
    assert np.isclose(common_share(iter(taus)), expect, rtol=1e-12)
    assert np.isclose(common_share(np.broadcast_to(t, (5, 6, 7)) for t in shift), 1.0)  # τ the same for every z_j
    centred = [t - t.mean(1, keepdims=True) for t in taus]  # nothing in common
    assert abs(common_share(centred)) < 1e-12


def test_common_shift_reads_every_seed_score_file(tmp_path):
    rng = np.random.default_rng(2)
    taus = [rng.normal(size=(5, 4, 3)) + rng.normal(size=(5, 1, 3)) for _ in range(2)]
    for seed, tau in enumerate(taus):
        path = tmp_path / "tda_scores" / "cnn" / "loo-paper" / "mnist3_2pc" / f"{seed}.pt"
        save_scores(path, tau, range(4), range(3), [11, 12, 13, 14, 15], seed, "loo-paper", {}, 1)
    for k in (5, 2):  # the last k checkpoints of each seed
        table = common_shift(tmp_path, "cnn", "mnist3", 2, ["loo-paper", "gd"], k)
        assert "| gd |" not in table  # no score files, no row
        assert _row(table, "loo-paper")[1:] == ["2", f"{common_share(t[-k:].astype(np.float32) for t in taus):.3f}"]


def test_compute_time_shows_peak_memory_only_where_recorded(tmp_path):
    def write(method, seed, config):
        path = tmp_path / "tda_scores" / "cnn" / method / "mnist3_2pc" / f"{seed}.pt"
        save_scores(
            path,
            np.zeros((5, 4, 3)),
            range(4),
            range(3),
            [11, 12, 13, 14, 15],
            seed,
            method,
            config,
            registry.helps_sign(method),
        )

    write("gd", 0, {"wall_time_s": 2.0})  # written before score files recorded memory
    write("gd", 1, {"wall_time_s": 4.0})
    assert _row(compute_time(tmp_path, "cnn", "mnist3", 2, ["gd", "ats"]), "gd") == ["gd", "2", "3.0", "6.0"]
    write("ats", 0, {"wall_time_s": 5.0, "peak_memory_gib": {"rss": 1.25}})
    write("ats", 1, {"wall_time_s": 7.0, "peak_memory_gib": {"rss": 2.5}})
    table = compute_time(tmp_path, "cnn", "mnist3", 2, ["gd", "ats"])
    assert _row(table, "gd") == ["gd", "2", "3.0", "6.0", "–"]
    assert _row(table, "ats") == ["ats", "2", "6.0", "12.0", "2.50"]  # the largest over the seeds


def test_fixed_sample_agreement_pairs_each_sample_with_the_truth_of_its_seed_and_epoch(tmp_path):
    """Against a plain loop: Spearman per (seed, epoch) with the ground truth, signs aligned; TracIn's one τ per
    seed goes with the truth's last epoch."""
    from helpers import write_synthetic
    from scipy import stats

    from bayestda.analysis.report import fixed_sample_agreement
    from bayestda.analysis.statistics import load_experiment

    write_synthetic(tmp_path, methods=("loo-scratch", "if-paper", "tracin-cp"))
    exp = load_experiment("cnn", "mnist3", 10, tmp_path, ["loo-scratch", "if-paper", "tracin-cp"])
    table = fixed_sample_agreement(exp, "loo-scratch").set_index("method")
    truth = exp.stacked["loo-scratch"]
    for method, sign, epochs in (("if-paper", -1, range(5)), ("tracin-cp", 1, [4])):
        own = exp.stacked[method]
        rhos = []
        for i in range(len(exp.seeds)):
            for e in epochs:
                same_epoch = own[i, e - truth.shape[1]]  # counted from the last epoch, which both have
                rhos.append(sign * stats.spearmanr(same_epoch.ravel(), truth[i, e].ravel()).statistic)
        assert table.loc[method, "samples"] == len(rhos)
        assert table.loc[method, "mean Spearman"] == pytest.approx(np.mean(rhos))
        assert table.loc[method, "sd"] == pytest.approx(np.std(rhos, ddof=1))
    assert table.loc["loo-scratch", "mean Spearman"] == pytest.approx(1.0)


def test_sample_distance_is_a_per_sample_spearman_and_relative_error(tmp_path):
    """Against a plain numpy loop on synthetic scores: same seed and epoch, signs aligned (gd helps with τ > 0,
    if-ggn with τ < 0), over the epochs both have."""
    from helpers import write_synthetic
    from scipy import stats

    from bayestda.analysis.report import sample_distance
    from bayestda.analysis.statistics import load_experiment

    write_synthetic(tmp_path, methods=("if-ggn", "if-ekfac", "gd"))
    exp = load_experiment("cnn", "mnist3", 10, tmp_path, ["if-ggn", "if-ekfac", "gd"])
    table = sample_distance(exp, [("if-ekfac", "if-ggn"), ("gd", "if-ggn")]).set_index("method")
    ref = np.asarray(exp.stacked["if-ggn"], dtype=np.float64)
    for method, sign in (("if-ekfac", 1), ("gd", -1)):
        own = np.asarray(exp.stacked[method], dtype=np.float64) * sign
        rhos, errors = [], []
        for i in range(len(exp.seeds)):
            for e in range(5):
                rhos.append(stats.spearmanr(own[i, e].ravel(), ref[i, e].ravel()).statistic)
                errors.append(np.linalg.norm(own[i, e] - ref[i, e]) / np.linalg.norm(ref[i, e]))
        row = table.loc[method]
        assert row["reference"] == "if-ggn" and row["samples"] == len(rhos) == 50
        assert row["mean Spearman"] == pytest.approx(np.mean(rhos))
        assert row["sd"] == pytest.approx(np.std(rhos, ddof=1))
        assert row["mean relative error"] == pytest.approx(np.mean(errors))
        assert (row["min"], row["max"]) == pytest.approx((min(errors), max(errors)))
    assert table.loc["if-ekfac", "mean relative error"] > 0.1  # the synthetic methods differ in scale


def test_compare_experiments_gives_mean_and_median_sigma_squared_ratios(tmp_path):
    rng = np.random.default_rng(3)
    sigmas = {"cnn": rng.uniform(0.5, 1.5, (6, 4))}
    sigmas["cnn3"] = 2 * sigmas["cnn"]
    sigmas["cnn3"][0, 0] = 100.0  # one heavy-tailed pair: it moves the mean σ² ratio, hardly the median's
    mu = rng.normal(size=(6, 4))
    for model, sigma in sigmas.items():
        res = tmp_path / "results" / f"{model}_mnist3_10pc"
        for folder, values in (("mu", mu), ("sigma", sigma)):
            (res / folder).mkdir(parents=True)
            pd.DataFrame(values).to_csv(res / folder / "gd_k5.csv")
        pd.DataFrame([{"method": "gd", "num_ckpts": 5, "p_type": p_type, "mean_p": mean_p,
                       "frac_sigma_above_abs_mu": 0.5} for p_type, mean_p in (("paper", 0.3), ("t", 0.4))]).to_csv(
            res / "summary.csv", index=False)  # fmt: skip
        seed_dir = tmp_path / "models" / model / "mnist3_10pc" / str(read_seeds()[0])
        seed_dir.mkdir(parents=True)
        (seed_dir / "metrics.json").write_text(json.dumps({"final_test_acc": 90.0, "config": {}}))
    table = compare_experiments(tmp_path, ["cnn_mnist3_10pc", "cnn3_mnist3_10pc"], ["gd"], 5)
    row = dict(zip(_row(table, "method"), _row(table, "gd | cnn3_mnist3_10pc"), strict=True))
    sq = {m: np.square(s) for m, s in sigmas.items()}
    assert row["mean σ²"] == f"{sq['cnn3'].mean():.3g}" and row["median σ²"] == f"{np.median(sq['cnn3']):.3g}"
    assert row["σ² ÷ first"] == f"{sq['cnn3'].mean() / sq['cnn'].mean():.3g}"
    assert row["median σ² ÷ first"] == f"{np.median(sq['cnn3']) / np.median(sq['cnn']):.3g}"
    assert float(row["median σ² ÷ first"]) < 5 < 50 < float(row["σ² ÷ first"])  # σ doubled, but for one pair
