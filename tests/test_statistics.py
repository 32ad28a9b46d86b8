"""Step 3 and 4 maths and outputs, on synthetic score files in the contract's format."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SEEDS, write_synthetic
from scipy import stats

from bayestda.analysis import statistics as st
from bayestda.analysis.correlations import correlation_tables, pearson_matrix, spearman_matrix
from bayestda.analysis.results import write_correlations, write_pvalues
from bayestda.core.errors import UserError
from bayestda.core.paths import score_file
from bayestda.methods.registry import PAPER_METHODS


def known_mu_sigma(mu, sigma, n_seeds=10, rng_seed=1):
    """[seeds, ...] samples whose sample mean is exactly mu and sample std exactly sigma."""
    e = np.random.default_rng(rng_seed).normal(size=(n_seeds, *np.shape(mu)))
    e = (e - e.mean(0)) / e.std(0, ddof=1)
    return mu + sigma * e


def test_paper_and_t_p_values_equal_scipy_for_known_mu_sigma():
    mu = np.array([[0.0, 0.5, -1.0], [2.0, -0.1, 3.0]])
    sigma = np.array([[1.0, 1.0, 0.5], [1.0, 2.0, 0.1]])
    x = known_mu_sigma(mu, sigma)
    got_mu, got_sigma = st.mean_and_std(x)
    np.testing.assert_allclose(got_mu, mu, atol=1e-12)
    np.testing.assert_allclose(got_sigma, sigma, rtol=1e-12)
    # paper: 2 Φ(-|μ/σ|), no √n
    np.testing.assert_allclose(
        st.p_values_paper(got_mu, got_sigma), 2 * stats.norm.cdf(-np.abs(mu / sigma)), rtol=1e-10
    )
    # t: t = μ / (σ/√n) with n-1 degrees of freedom, and scipy's own test
    t = mu / (sigma / np.sqrt(10))
    np.testing.assert_allclose(st.p_values_ttest(x), 2 * stats.t.sf(np.abs(t), df=9), rtol=1e-8)
    np.testing.assert_allclose(st.p_values_ttest(x), stats.ttest_1samp(x, 0, axis=0).pvalue, rtol=1e-12)


def test_zero_variance_pairs():
    mu, sigma = np.array([0.0, 1.0]), np.array([0.0, 0.0])
    assert st.p_values_paper(mu, sigma).tolist() == [1.0, 0.0]
    assert st.p_values_ttest(np.zeros((5, 1)))[0] == 1.0


def test_fdr_is_benjamini_hochberg():
    p = np.array([[0.01, 0.04], [0.03, 0.2]])
    # by hand: sorted 0.01, 0.03, 0.04, 0.2 -> 0.04, 0.0533, 0.0533, 0.2
    np.testing.assert_allclose(st.fdr_bh(p), [[0.04, 0.16 / 3], [0.16 / 3, 0.2]])


def test_average_last_checkpoints():
    scores = np.broadcast_to(np.arange(5.0)[None, :, None, None], (3, 5, 2, 2))
    assert st.average_last_checkpoints(scores, 1)[0, 0, 0] == 4.0
    assert st.average_last_checkpoints(scores, 2)[0, 0, 0] == 3.5
    assert st.average_last_checkpoints(scores, 5)[0, 0, 0] == 2.0


def test_correlation_matrices_equal_scipy_pairwise():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(4, 50))
    rows[2] = np.round(rows[0] * 3) + rng.normal(size=50) * 0.01  # a correlated row
    rows[3, :10] = 0.0  # ties
    pear, spear = pearson_matrix(rows), spearman_matrix(rows)
    for i in range(4):
        for j in range(4):
            assert pear[i, j] == pytest.approx(stats.pearsonr(rows[i], rows[j]).statistic, abs=1e-12)
            assert spear[i, j] == pytest.approx(stats.spearmanr(rows[i], rows[j]).statistic, abs=1e-12)


def test_aligned_signs_flip_only_signed_quantities():
    rng = np.random.default_rng(4)
    mu = rng.normal(size=(3, 3))
    sigma = np.abs(rng.normal(size=(3, 3))) + 0.1
    p = {"paper": st.p_values_paper(mu, sigma), "t": rng.uniform(size=(3, 3))}
    a = st.PairStats(mu, sigma, p, p)
    b = st.PairStats(-mu, sigma, p, p)  # the same method, reported with the opposite sign convention
    tables = correlation_tables({"loo-paper": a, "ats": b}, {"loo-paper": 1, "ats": -1})
    assert tables[("pearson", "mu", "raw")].loc["loo-paper", "ats"] == pytest.approx(-1)
    assert tables[("pearson", "mu", "aligned")].loc["loo-paper", "ats"] == pytest.approx(1)
    assert tables[("spearman", "z", "aligned")].loc["loo-paper", "ats"] == pytest.approx(1)
    assert tables[("pearson", "sigma", "raw")].equals(tables[("pearson", "sigma", "aligned")])


def test_pvalues_step_outputs_and_csv_round_trip(tmp_path):
    train_idx, test_idx = write_synthetic(tmp_path)
    exp = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    out = write_pvalues(exp)
    assert out == tmp_path / "results" / "cnn_mnist3_10pc"
    # per-pair CSV: dataset indices label rows and columns, values equal the in-memory statistics
    frame = pd.read_csv(out / "pvalues" / "gd_k3_paper.csv", index_col=0)
    assert frame.index.tolist() == train_idx.tolist()
    assert [int(c) for c in frame.columns] == test_idx.tolist()
    expected = st.pair_stats(exp.scores("gd"), 3).p["paper"]
    np.testing.assert_allclose(frame.to_numpy(), expected, rtol=1e-6)
    mean_p = pd.read_csv(out / "mean_p_values.csv", index_col=0)
    assert mean_p.index.tolist() == [1, 2, 3, 4, 5] and mean_p.columns.tolist() == list(PAPER_METHODS)
    assert mean_p.loc[3, "gd"] == pytest.approx(expected.mean(), abs=1e-6)
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 5 * 5 * 2
    row = summary.query("method == 'gd' and num_ckpts == 3 and p_type == 'paper'").iloc[0]
    assert row["frac_p_below_0.05"] == pytest.approx((expected < 0.05).mean(), abs=1e-6)
    for name in ["mu_sigma_gd_k5", "mean_p_vs_num_ckpts_paper", "p_value_hist_t_k5"]:
        assert (out / "figures" / f"{name}.png").stat().st_size > 0 and (out / "figures" / f"{name}.pdf").is_file()
    assert write_pvalues(exp) is None  # rerun on the same scores is skipped
    assert write_pvalues(exp, overwrite=True) == out


def test_correlations_step_outputs(tmp_path):
    write_synthetic(tmp_path)
    exp = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    write_pvalues(exp)
    out = write_correlations(exp)
    table = pd.read_csv(out / "correlations" / "spearman_mu_aligned.csv", index_col=0)
    assert table.index.tolist() == list(PAPER_METHODS) and np.allclose(np.diag(table), 1)
    mus = np.stack([st.pair_stats(exp.scores(m), 5).mu.ravel() * exp.signs[m] for m in PAPER_METHODS])
    np.testing.assert_allclose(table.to_numpy(), stats.spearmanr(mus, axis=1).statistic, atol=1e-6)
    assert (out / "figures" / "corr_pearson_sigma_raw.pdf").is_file()
    assert write_correlations(exp) is None


def test_missing_files_are_listed_with_their_command(tmp_path):
    write_synthetic(tmp_path, seeds=SEEDS[:7])
    score_file(tmp_path, "cnn", "ats", "mnist3", 10, 3).unlink()
    with pytest.raises(UserError) as err:
        st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    msg = str(err.value)
    assert "\n" not in msg
    assert (
        "loo-paper for seeds 7,8,9 (make them with: python tda_cnn_scripts/loo.py --model cnn --task mnist3 --num_per_class 10 --protocol paper)"
        in msg
    )
    assert "ats for seeds 3,7,8,9" in msg and "if-paper for seeds 7,8,9" in msg and "--solver paper" in msg
    assert "--allow_partial" in msg


def test_allow_partial_uses_complete_seeds_and_names_them(tmp_path, capsys):
    write_synthetic(tmp_path, seeds=SEEDS[:4])
    score_file(tmp_path, "cnn", "gd", "mnist3", 10, 1).unlink()
    exp = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS), allow_partial=True)
    assert exp.seeds == [0, 2, 3]
    assert "using only the 3 seeds with every method: [0, 2, 3]" in capsys.readouterr().out


def test_fewer_than_two_seeds_mismatched_indices_and_nan_are_refused(tmp_path):
    write_synthetic(tmp_path, seeds=[0])
    with pytest.raises(UserError, match="at least 2 seeds"):
        st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd"], seeds=[0])
    write_synthetic(tmp_path / "b", methods=["gd"], seeds=[0, 1])
    write_synthetic(tmp_path / "b", methods=["gc"], seeds=[0, 1], n_train=7)
    with pytest.raises(UserError, match="other train/test indices"):
        st.load_experiment("cnn", "mnist3", 10, tmp_path / "b", ["gd", "gc"], seeds=[0, 1])
    write_synthetic(tmp_path / "c", methods=["gd"], seeds=[0, 1])
    path = score_file(tmp_path / "c", "cnn", "gd", "mnist3", 10, 1)
    rec = torch.load(path, weights_only=True)
    rec["scores"][0, 0, 0] = float("nan")
    torch.save(rec, path)
    with pytest.raises(UserError, match="1 NaN/inf scores"):
        st.load_experiment("cnn", "mnist3", 10, tmp_path / "c", ["gd"], seeds=[0, 1])


def test_experiment_names():
    assert st.parse_experiment_name("cnn3-deinit_mnist3_50pc") == ("cnn3-deinit", "mnist3", 50)
    with pytest.raises(UserError, match="<model>_<task>_<n>pc"):
        st.parse_experiment_name("cnn_mnist3")


@pytest.mark.slow  # five interpreters; the steps' code runs in-process in the tests around it
def test_scripts_end_to_end_and_bad_input(tmp_path, run_script):
    write_synthetic(tmp_path)
    args = ["--experiment", "cnn_mnist3_10pc", "--out_root", str(tmp_path)]
    proc = run_script("compute_pvalues.py", *args)
    assert proc.returncode == 0, proc.stderr
    assert "results written" in proc.stdout
    assert "skipped" in run_script("compute_pvalues.py", *args).stdout
    proc = run_script("compute_correlations.py", "--model", "cnn", "--task", "mnist3", "--num_per_class", "10",
                      "--out_root", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    bad = run_script("compute_pvalues.py", "--experiment", "cnn_mnist3_20pc", "--out_root", str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "missing score files" in bad.stderr
    bad = run_script("compute_pvalues.py", "--model", "cnn", "--out_root", str(tmp_path))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "name the experiment" in bad.stderr


def test_checkpoint_counts_outside_the_score_files_are_refused_not_clamped(tmp_path):
    from bayestda.analysis.report import experiment_report

    write_synthetic(tmp_path)
    exp = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    assert exp.n_ckpts == 5
    for k in (0, 6):
        with pytest.raises(UserError, match=rf"--max_ckpts {k}: the score files of cnn_mnist3_10pc hold 5 .* 1\.\.5"):
            write_pvalues(exp, max_ckpts=k)
        with pytest.raises(UserError, match=rf"--num_ckpts {k}: .* use 1\.\.5"):
            write_correlations(exp, num_ckpts=k)
    write_pvalues(exp, max_ckpts=3)
    assert sorted(set(pd.read_csv(exp.results_dir / "summary.csv").num_ckpts)) == [1, 2, 3]
    write_correlations(exp, num_ckpts=3)
    with pytest.raises(UserError, match=r"--num_ckpts 5: step 3 computed cnn_mnist3_10pc for k = 1, 2, 3"):
        experiment_report(tmp_path, "cnn", "mnist3", 10, list(PAPER_METHODS), k=5)


def test_results_of_more_methods_or_seeds_are_not_replaced_by_fewer(tmp_path):
    write_synthetic(tmp_path)
    full = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    out = write_pvalues(full)
    fewer = st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "gc"])
    with pytest.raises(UserError) as err:
        write_pvalues(fewer)
    msg = str(err.value)
    assert "holds step-3 results of methods loo-paper,ats,if-paper,gd,gc" in msg and "without loo-paper, ats" in msg
    assert "--overwrite" in msg and "\n" not in msg
    seeds = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS), seeds=SEEDS[:5])
    with pytest.raises(UserError, match="without seed 5, seed 6"):
        write_pvalues(seeds)
    assert pd.read_csv(out / "mean_p_values.csv", index_col=0).columns.tolist() == list(PAPER_METHODS)  # intact
    write_pvalues(fewer, overwrite=True)  # asked for: replaced, and nothing of the dropped methods stays
    assert pd.read_csv(out / "mean_p_values.csv", index_col=0).columns.tolist() == ["gd", "gc"]
    assert sorted({f.name.split("_k")[0] for f in (out / "mu").iterdir()}) == ["gc", "gd"]
    assert write_pvalues(full) == out  # more methods: replaces without --overwrite


def test_step_4_runs_only_on_step_3_s_methods_seeds_and_scores(tmp_path):
    write_synthetic(tmp_path)
    full = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    with pytest.raises(
        UserError, match=r"no finished step-3 results; make them first with: python compute_pvalues\.py"
    ):
        write_correlations(full)
    write_pvalues(full, max_ckpts=3)
    fewer = st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "gc"])
    with pytest.raises(UserError) as err:
        write_correlations(fewer)
    assert "are of methods loo-paper,ats,if-paper,gd,gc" in str(err.value)
    assert "python compute_pvalues.py --experiment cnn_mnist3_10pc --methods gd,gc" in str(err.value)
    with pytest.raises(UserError, match="--num_ckpts 5: step 3 made cnn_mnist3_10pc for k = \\[1, 2, 3\\]"):
        write_correlations(full, num_ckpts=5)
    write_correlations(full, num_ckpts=3)
    write_synthetic(tmp_path, rng_seed=7)  # the scores change after step 3
    changed = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    with pytest.raises(UserError, match="score files that have changed since"):
        write_correlations(changed, num_ckpts=3)


def test_the_results_page_shows_the_tables_and_every_figure(tmp_path):
    write_synthetic(tmp_path)
    exp = st.load_experiment("cnn", "mnist3", 10, tmp_path, list(PAPER_METHODS))
    out = write_pvalues(exp)
    page = (out / "README.md").read_text()
    mean_p = pd.read_csv(out / "mean_p_values.csv", index_col=0)
    assert f"| gd | {' | '.join(f'{v:.3f}' for v in mean_p['gd'])} |" in page
    assert "Step 4 has not run" in page
    write_correlations(exp)
    page = (out / "README.md").read_text()
    rho = pd.read_csv(out / "correlations" / "spearman_mu_aligned.csv", index_col=0)
    assert f"| ats | {' | '.join(f'{v:.2f}' for v in rho.loc['ats'])} |" in page
    figures = sorted(f.name for f in (out / "figures").glob("*.png"))
    assert len(figures) > 20 and all(f"](figures/{name})" in page for name in figures)
    assert page.count("![") == len(figures)


def test_the_report_refuses_steps_3_and_4_of_different_inputs(tmp_path):
    from bayestda.analysis.report import check_results_agree

    write_synthetic(tmp_path, methods=["gd", "gc"])
    two = st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "gc"])
    write_pvalues(two)
    with pytest.raises(UserError, match="lacks finished step-4 results"):
        check_results_agree(tmp_path, "cnn", "mnist3", 10)
    write_correlations(two)
    check_results_agree(tmp_path, "cnn", "mnist3", 10)  # agree: no error
    write_synthetic(tmp_path, methods=["if-paper"])
    write_pvalues(st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "gc", "if-paper"]))  # step 4 not rerun
    with pytest.raises(UserError) as err:
        check_results_agree(tmp_path, "cnn", "mnist3", 10)
    assert "python compute_correlations.py --experiment cnn_mnist3_10pc --methods gd,gc,if-paper" in str(err.value)
    write_correlations(st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "gc", "if-paper"]))
    write_synthetic(tmp_path, methods=["gc"], rng_seed=3)  # new scores after steps 3 and 4
    with pytest.raises(UserError, match=r"changed after steps 3 and 4 ran; rerun them: python compute_pvalues\.py"):
        check_results_agree(tmp_path, "cnn", "mnist3", 10)


def test_a_method_with_one_tau_per_seed_has_only_k_1_and_enters_step_4_with_it(tmp_path, capsys):
    """TracIn gives one τ per seed ([1, n, m] at the run's last epoch): step 3 has k = 1 only for it, step 4 at
    k = 5 correlates its single τ per seed with the others' 5-checkpoint means, and the outputs say so."""
    from bayestda.analysis.report import console_summary, results_page

    write_synthetic(tmp_path, methods=("gd", "loo-scratch", "tracin-cp"))
    exp = st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "loo-scratch", "tracin-cp"])
    assert exp.n_ckpts == 5 and exp.one_per_seed() == ["tracin-cp"] and exp.k_for("tracin-cp", 5) == 1
    res = write_pvalues(exp)
    assert "tracin-cp: one τ per seed (over the whole run), so only k = 1" in capsys.readouterr().out
    summary = pd.read_csv(res / "summary.csv")
    assert sorted(set(summary[summary.method == "tracin-cp"].num_ckpts)) == [1]
    assert sorted(set(summary[summary.method == "gd"].num_ckpts)) == [1, 2, 3, 4, 5]
    assert not (res / "mu" / "tracin-cp_k2.csv").exists()
    write_correlations(exp)
    assert "correlated at k = 1 with the others at k = 5" in capsys.readouterr().out
    # the obvious computation: μ of each method (TracIn's one τ per seed; the others' last-5 means)
    mu = {m: exp.scores(m)[:, -exp.k_for(m, 5) :].mean(1).mean(0) for m in exp.methods}
    rho = stats.spearmanr(mu["tracin-cp"].ravel(), mu["gd"].ravel()).statistic
    table = pd.read_csv(res / "correlations" / "spearman_mu_raw.csv", index_col=0)
    assert table.loc["tracin-cp", "gd"] == pytest.approx(rho, abs=1e-6)
    assert "tracin-cp (k=1)" in results_page(res) and "tracin-cp (k=1)" in console_summary(res)


def test_a_one_per_seed_score_file_of_other_epochs_is_refused(tmp_path):
    write_synthetic(tmp_path, methods=("gd", "tracin-cp"))
    path = score_file(tmp_path, "cnn", "tracin-cp", "mnist3", 10, 3)
    record = torch.load(path, weights_only=True)
    record["ckpt_epochs"] = [14]
    torch.save(record, path)
    with pytest.raises(UserError, match=r"epochs \[14\] \(it gives one τ per seed, at the run's last epoch 15\)"):
        st.load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "tracin-cp"])
