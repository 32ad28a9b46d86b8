"""Distributional TDA: the measures against scipy and numpy loops, the ground truth against step 3's μ, perfect
predictions scored as perfect, the fixed-seed view against a per-seed loop, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bayestda.analysis import distributional as dist
from bayestda.analysis.statistics import Experiment, pair_stats
from bayestda.core.errors import UserError

SEEDS, CKPTS, N, M = 6, 5, 12, 7


def experiment(tmp_path: Path, scores: dict[str, np.ndarray], signs: dict[str, int]) -> Experiment:
    return Experiment(
        "cnn", "mnist3", 4, tmp_path, list(scores), list(range(SEEDS)), np.arange(N) * 3, np.arange(M) * 5, CKPTS,
        {m: s.astype(np.float32) for m, s in scores.items()}, signs, {m: {} for m in scores}, [11, 12, 13, 14, 15],
    )  # fmt: skip


def predictions(exp, base, methods, k=5):
    return {m: dist.predicted_measures(exp, base, m, k) for m in methods}


@pytest.fixture
def synthetic(tmp_path):
    rng = np.random.default_rng(0)
    loo = rng.normal(0, 0.1, (SEEDS, CKPTS, N, M)) + rng.normal(0, 0.05, (1, 1, N, M))
    base = rng.gamma(2.0, 0.3, (SEEDS, M))
    scores = {
        "loo-scratch": loo,
        "ud": loo.copy(),  # a perfect prediction
        "if-ggn": -N * loo,  # the same, in IF's units: removal = −τ/n
        "gd": rng.normal(size=loo.shape),
        "tracin-cp": rng.normal(size=(SEEDS, 1, N, M)),
    }
    signs = {"loo-scratch": 1, "ud": 1, "if-ggn": -1, "gd": 1, "tracin-cp": 1}
    return experiment(tmp_path, scores, signs), base


def test_measures_equal_scipy_and_numpy_loops():
    rng = np.random.default_rng(1)
    before = np.round(rng.normal(size=(10, 40)), 1)  # rounded: ties inside and across the samples
    after = np.round(before + rng.normal(0, 0.5, size=before.shape), 1)
    after[:, :5] = before[:, :5]  # identical samples: every measure 0
    got = dist.measures(before, after)
    for i in range(before.shape[1]):
        a, b = before[:, i], after[:, i]
        assert got["dmean"][i] == pytest.approx(b.mean() - a.mean(), abs=1e-12)
        assert got["dstd"][i] == pytest.approx(np.std(b, ddof=1) - np.std(a, ddof=1), abs=1e-12)
        assert got["w1"][i] == pytest.approx(stats.wasserstein_distance(a, b), abs=1e-12)
        assert got["w2"][i] == pytest.approx(np.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2)), abs=1e-12)
        assert got["ks"][i] == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert all(np.all(v[:5] == 0) for v in got.values())


def test_ground_truth_dmean_is_step_3s_mu(synthetic):
    exp, base = synthetic
    truth = dist.ground_truth(exp, base, k=5)
    np.testing.assert_allclose(truth["dmean"], pair_stats(exp.scores("loo-scratch"), 5).mu, rtol=1e-10, atol=1e-12)
    # W2 ≥ W1 ≥ |Δmean| for any two samples, and KS in [0, 1]
    assert np.all(truth["w2"] >= truth["w1"] - 1e-12) and np.all(truth["w1"] >= np.abs(truth["dmean"]) - 1e-12)
    assert np.all((truth["ks"] >= 0) & (truth["ks"] <= 1))


def test_a_perfect_prediction_scores_one_in_every_unit(synthetic):
    exp, base = synthetic
    truth = dist.ground_truth(exp, base, k=5)
    scores = dist.prediction_scores(exp, truth, predictions(exp, base, ["ud", "if-ggn"]), list(dist.MEASURES))
    assert np.allclose(scores[["spearman", "pearson", "top1pct_overlap"]].to_numpy(), 1.0, atol=1e-6)
    assert scores["loss units"].all()


def test_a_similarity_is_scored_on_the_ranking_of_dmean_only(synthetic):
    exp, base = synthetic
    truth = dist.ground_truth(exp, base, k=5)
    row = dist.prediction_scores(exp, truth, predictions(exp, base, ["gd"]), ["dmean"]).iloc[0]
    mu = exp.scores("gd").mean((0, 1)).ravel()
    assert row["spearman"] == pytest.approx(stats.spearmanr(mu, truth["dmean"].ravel()).statistic)
    assert np.isnan(row["pearson"]) and not row["loss units"]
    mixed = dist.prediction_scores(exp, truth, predictions(exp, base, ["gd", "ud"]), list(dist.MEASURES))
    assert list(mixed[mixed.method == "gd"].measure) == ["dmean"] and len(mixed[mixed.method == "ud"]) == 5
    with pytest.raises(UserError, match=r"gd is not in loss units .* has no w2, ks; drop it from --methods or ask"):
        dist.check_measures(exp, ["ud", "gd"], ["dmean", "w2", "ks"])
    dist.check_measures(exp, ["ud", "gd"], ["dmean"])  # allowed


def test_top_overlap():
    true = np.arange(1000.0)
    assert dist.top_overlap(true, true) == 1.0
    assert dist.top_overlap(-true, true) == 0.0
    pred = true.copy()
    pred[-5:] = -1  # 5 of the true top 10 pushed out
    assert dist.top_overlap(pred, true) == 0.5


def test_fixed_seed_view_equals_a_per_seed_loop(synthetic):
    exp, _ = synthetic
    by_epoch, versus = dist.fixed_seed_view(exp, ["if-ggn", "gd", "tracin-cp"], k=5)
    truth = exp.scores("loo-scratch")
    for method in ("if-ggn", "gd"):
        sign = exp.signs[method]
        for e_pos, epoch in enumerate(exp.epochs):
            rhos = [stats.spearmanr(exp.scores(method)[s, e_pos].ravel() * sign, truth[s, e_pos].ravel()).statistic
                    for s in range(SEEDS)]  # fmt: skip
            row = by_epoch[(by_epoch.method == method) & (by_epoch.epoch == epoch)].iloc[0]
            assert row["mean spearman"] == pytest.approx(np.mean(rhos))
            assert row["sd"] == pytest.approx(np.std(rhos, ddof=1))
    assert by_epoch[by_epoch.method == "if-ggn"]["mean spearman"].to_numpy() == pytest.approx(1.0)
    assert list(by_epoch[by_epoch.method == "tracin-cp"].epoch) == [15]  # one τ per seed: the last epoch
    assert versus.set_index("method").iloc[:, 1]["if-ggn"] == pytest.approx(1.0)


def test_missing_ground_truth_is_one_line(tmp_path):
    exp = experiment(tmp_path, {"ud": np.zeros((SEEDS, CKPTS, N, M))}, {"ud": 1})
    with pytest.raises(UserError, match=r"loo-scratch's retrains, which --methods lacks; .*--methods loo-scratch\)$"):
        dist.check_truth(exp)


def test_the_step_writes_its_results_and_skips_them_when_up_to_date(synthetic):
    exp, base = synthetic
    methods = ["loo-scratch", "ud", "if-ggn"]
    exp.methods = methods
    out = dist.write_distributional(exp, base, 5, list(dist.MEASURES))
    names = {p.name for p in out.iterdir()} | {p.name for p in (out / "figures").iterdir()}
    assert {"ground_truth.csv", "scores.csv", "fixed_seed_by_epoch.csv", "fixed_vs_across.csv", "summary.json",
            "predicted_vs_true_w2.png", "fixed_seed_spearman_by_epoch.png"} <= names  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == N * M and 0 <= summary["top1pct_overlap_abs_dmean_w2"] <= 1
    assert dist.write_distributional(exp, base, 5, list(dist.MEASURES)) is None
    assert dist.write_distributional(exp, base + 1, 5, list(dist.MEASURES)) is not None  # other base losses: redo
    assert "Spearman of predicted with true" in dist.console_summary(out)


def test_the_figure_has_a_panel_per_method_and_the_diagonal_only_in_loss_units(synthetic, monkeypatch):
    exp, base = synthetic
    methods = ["ud", "if-ggn", "gd", "tracin-cp", "loo-paired", "gc"]
    exp.stacked = {**exp.stacked, "loo-paired": exp.stacked["loo-scratch"], "gc": exp.stacked["gd"]}
    exp.signs = {**exp.signs, "loo-paired": exp.signs["loo-scratch"], "gc": exp.signs["gd"]}
    truth = dist.ground_truth(exp, base, 5)
    preds = {m: dist.predicted_measures(exp, base, m, 5)["dmean"] for m in methods}
    table = dist.prediction_scores(exp, truth, {m: {"dmean": p} for m, p in preds.items()}, ["dmean"])
    figures = []
    monkeypatch.setattr(dist.plots, "save", lambda fig, stem: figures.append(fig))
    dist.plots.predicted_vs_true(truth["dmean"], preds, "dmean", table.set_index("method"), Path("unused"))
    axes = figures[0].axes
    assert len(axes) == 10 and sum(ax.axison for ax in axes) == len(methods)  # 2 rows of 5, 4 spare panels off
    for ax, method, row in zip(axes, methods, table.itertuples(), strict=False):
        assert ax.get_title().endswith(f"ρ = {row.spearman:.2f}") and row.method == method
        assert len(ax.lines) == (1 if method in ("ud", "if-ggn", "loo-paired") else 0), method


def test_whole_run_methods_sit_beside_the_last_epoch_in_the_fixed_seed_figure(synthetic, monkeypatch):
    exp, _ = synthetic
    by_epoch, _ = dist.fixed_seed_view(exp, ["if-ggn", "gd", "tracin-cp"], k=5)
    figures = []
    monkeypatch.setattr(dist.plots, "save", lambda fig, stem: figures.append(fig))
    dist.plots.fixed_seed_by_epoch(by_epoch, Path("unused"))
    ax = figures[0].axes[0]
    points = {c.get_label(): c.lines[0] for c in ax.containers}  # each errorbar's data line
    last = max(exp.epochs)
    assert list(points["IF (ggn)"].get_xdata()) == list(exp.epochs) and points["IF (ggn)"].get_marker() == "o"
    whole = points["TracIn (cp), whole run"]
    assert whole.get_marker() == "D" and whole.get_linestyle() == "None"
    assert last < whole.get_xdata()[0] < last + 0.5  # right of the last epoch's points, not on them
