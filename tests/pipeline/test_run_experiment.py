"""run_experiment.py end to end on a tiny real experiment: the local backend with --jobs 2 gives exactly what the
steps give when run by hand in sequence; reruns do nothing; Ray gives the same; Slurm scripts run the same steps.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bayestda.analysis.report import common_share
from bayestda.core.cli import available_cores, run
from bayestda.core.paths import REPO_ROOT, read_seeds, score_file
from bayestda.pipeline.cli import main

N = "10"
SEED_IDS = ["0", "1"]
METHODS = ["gd", "loo-scratch"]
TINY = [
    "--task",
    "mnist3",
    "--num_per_class",
    N,
    "--seed_ids",
    *SEED_IDS,
    "--epochs",
    "2",
    "--methods",
    ",".join(METHODS),
]
# Both runs use the same threads per process: float sums, and so the last bits of trained weights, depend on it.
THREADS = str(max(1, available_cores() // 2))


def sh(args: list[str], data_root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BAYESTDA_DATA_ROOT": str(data_root), "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    return proc


def experiment(out: Path, data_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return sh(["run_experiment.py", *TINY, "--out_root", str(out), *extra], data_root)


@pytest.fixture(scope="module")
def by_runner(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("runner")
    proc = experiment(out, data_root, "--jobs", "2", "--threads", THREADS, "--gpus", "none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 task(s) finished" in proc.stdout and "0 failed" in proc.stdout
    assert f"{THREADS} thread(s) per task" in proc.stdout
    _assert_results_summary(proc.stdout, out)
    return out


def _assert_results_summary(stdout: str, out: Path) -> None:
    """The end of a run that reached step 3: mean p per method and k, σ > |μ| share, figures and report."""
    res = out / "results" / "cnn_mnist3_10pc"
    mean_p = pd.read_csv(res / "mean_p_values.csv", index_col=0)
    tail = stdout[stdout.index("mean p-value") :]
    for method in METHODS:
        row = next(line.split() for line in tail.splitlines() if line.startswith(method + " "))
        assert row[1:] == [f"{v:.3f}" for v in mean_p[method]], row
    assert "share of pairs with σ > |μ| (k=2): " in tail
    assert f"figures: {res / 'figures'}/" in tail and f"report: {res / 'README.md'}" in tail
    assert (res / "README.md").is_file()


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory, run_script) -> Path:
    """The README's steps, one after another, each run as `python script ...` would run it (`run_in_process`), with
    the runner's threads per task."""
    out = str(tmp_path_factory.mktemp("by_hand"))
    env = {"OMP_NUM_THREADS": THREADS, "CUDA_VISIBLE_DEVICES": ""}
    flags = ["--task", "mnist3", "--num_per_class", N, "--out_root", out]
    steps = [["train_cnn.py", *flags, "--epochs", "2", "--seed_id", k] for k in SEED_IDS]
    for k in SEED_IDS:
        steps += [
            ["tda_cnn_scripts/gd.py", *flags, "--seed_id", k],
            ["tda_cnn_scripts/loo.py", *flags, "--protocol", "scratch", "--seed_id", k],
        ]
    stats = ["--model", "cnn", *flags, "--methods", ",".join(METHODS), "--seed_ids", *SEED_IDS]
    steps += [["compute_pvalues.py", *stats], ["compute_correlations.py", *stats]]
    for step in steps:
        proc = run_script(*step, env=env)
        assert proc.returncode == 0, f"{step}: {proc.stderr}"
    return Path(out)


def assert_same_outputs(a: Path, b: Path):
    for method in METHODS:
        for seed in map(int, SEED_IDS):
            x = torch.load(score_file(a, "cnn", method, "mnist3", 10, seed), weights_only=False)
            y = torch.load(score_file(b, "cnn", method, "mnist3", 10, seed), weights_only=False)
            assert torch.equal(x["scores"], y["scores"]), (method, seed)
            assert torch.equal(x["train_idx"], y["train_idx"]) and x["ckpt_epochs"] == y["ckpt_epochs"]
    results = Path("results") / "cnn_mnist3_10pc"
    tables = [
        "mean_p_values.csv",
        "summary.csv",
        "correlations/pearson_mu_raw.csv",
        "correlations/spearman_p_aligned.csv",
    ]
    for name in tables + [f"pvalues/{m}_k2_t.csv" for m in METHODS]:
        assert filecmp.cmp(a / results / name, b / results / name, shallow=False), name


def test_local_backend_equals_the_steps_by_hand(by_runner, by_hand):
    assert_same_outputs(by_runner, by_hand)
    logs = by_runner / "logs" / "cnn_mnist3_10pc"
    assert {p.name for p in logs.glob("*.log")} == {
        *(f"{stage}_seed{k}.log" for stage in ["train", *METHODS] for k in SEED_IDS),
        "pvalues.log",
        "correlations.log",
    }
    assert "=== exit status 0" in (logs / "loo-scratch_seed1.log").read_text()


def test_rerun_and_dry_run_find_nothing_to_do(by_runner, data_root):
    proc = experiment(by_runner, data_root, "--dry_run")
    assert proc.returncode == 0 and "0 task(s) to run, 9 already done" in proc.stdout
    proc = experiment(by_runner, data_root)
    assert proc.returncode == 0 and "every task is already done" in proc.stdout
    _assert_results_summary(proc.stdout, by_runner)


def test_dry_run_lists_only_what_is_missing_and_slurm_scripts_rerun_it(by_runner, by_hand, data_root, tmp_path):
    """Delete one score file: only it and the statistics are listed, and the Slurm array script recreates it."""
    out = tmp_path / "partial"
    out.mkdir()
    (out / "models").symlink_to(by_runner / "models", target_is_directory=True)
    lost = score_file(out, "cnn", "gd", "mnist3", 10, 1)
    for method in METHODS:
        for k in map(int, SEED_IDS):
            path = score_file(out, "cnn", method, "mnist3", 10, k)
            if path != lost:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(score_file(by_runner, "cnn", method, "mnist3", 10, k).read_bytes())
    proc = experiment(out, data_root, "--dry_run", "--backend", "slurm", "--slurm_cpus", THREADS, "--slurm_gpus", "0")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines()[1:] if line.startswith("  ")]
    assert listed == ["gd_seed1", "pvalues", "correlations"]

    scripts = out / "logs" / "cnn_mnist3_10pc" / "slurm"
    assert sorted(p.name for p in scripts.iterdir()) == [
        "01_gd.sbatch", "02_pvalues.sbatch", "03_correlations.sbatch", "submit.sh",
    ]  # fmt: skip
    gd = (scripts / "01_gd.sbatch").read_text()
    assert "#SBATCH --array=1\n" in gd and "--gres" not in gd and "afterok" not in gd
    submit = (scripts / "submit.sh").read_text()
    assert "--dependency=afterok:$jid_gd 02_pvalues.sbatch" in submit
    # Run the array element for seed_id 1 as Slurm would (bash, with the array index set).
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "BAYESTDA_DATA_ROOT": str(data_root)}
    proc = subprocess.run(["bash", str(scripts / "01_gd.sbatch")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (out / "logs" / "cnn_mnist3_10pc" / "gd_seed1.log").read_text()
    recreated = torch.load(lost, weights_only=False)["scores"]
    assert torch.equal(recreated, torch.load(score_file(by_hand, "cnn", "gd", "mnist3", 10, 1))["scores"])


@pytest.mark.slow  # an optional backend (req-scale.txt); its own Ray cluster start costs a minute
def test_ray_backend_equals_the_local_one(by_runner, data_root, tmp_path):
    pytest.importorskip("ray", reason="ray is optional (req-scale.txt); CI installs it")
    out = tmp_path / "ray"
    proc = experiment(out, data_root, "--backend", "ray", "--jobs", "2", "--methods", "gd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ray: " in proc.stdout and "6 task(s) finished" in proc.stdout
    for seed in map(int, SEED_IDS):
        x = torch.load(score_file(out, "cnn", "gd", "mnist3", 10, seed), weights_only=False)["scores"]
        assert torch.equal(x, torch.load(score_file(by_runner, "cnn", "gd", "mnist3", 10, seed))["scores"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed_ids", "12"], "--seed_ids [12] out of range"),
        (["--methods", "gd,datamodels"], "unknown method 'datamodels'"),
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--model_name_or_path", "/x"], "are for --model vit"),
        (["--gpus", "a,b"], "give GPU ids"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--backend", "slurm", "--threads", "2"], "--threads is for the local and ray backends"),
        (["--num_per_class", "-3"], "--num_per_class must be a whole number of training images per class"),
        (["--retries", "-1"], "--retries must be at least 0, got -1"),
        (["--backend", "slurm", "--slurm_cpus", "0"], "--slurm_cpus must be at least 1, got 0"),
        (["--backend", "slurm", "--slurm_time", "0"], "--slurm_time must be at least 1, got 0"),
        (["--epochs", "x"], "--epochs must be an integer, got 'x'"),
        (["--dropout", "0.1"], "--dropout 0.1: the cnn family's models have no dropout layers"),
        (["--momentum", "0.9"], "--momentum and --nesterov are for --optimizer sgd, not adam"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, monkeypatch, capsys, extra, message):
    argv = ["run_experiment.py", *TINY, "--out_root", str(tmp_path), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: main("doc"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_report_reads_back_the_experiment(by_runner, data_root):
    """report_experiment.py (REPRODUCTION.md's tables) quotes the artifacts it read, number for number."""
    import json

    import pandas as pd

    proc = sh(["report_experiment.py", "--experiment", "cnn_mnist3_10pc", "--num_ckpts", "2",
               "--out_root", str(by_runner)], data_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = proc.stdout
    accs = [json.loads((by_runner / f"models/cnn/mnist3_10pc/{s}/metrics.json").read_text())["final_test_acc"]
            for s in map(int, SEED_IDS)]  # fmt: skip
    assert f"| 2 | {sum(accs) / 2:.2f} |" in report
    for method in METHODS:
        configs = [torch.load(score_file(by_runner, "cnn", method, "mnist3", 10, s), weights_only=False)["config"]
                   for s in map(int, SEED_IDS)]  # fmt: skip
        secs, rss = [c["wall_time_s"] for c in configs], [c["peak_memory_gib"]["rss"] for c in configs]
        assert f"| {method} | 2 | {sum(secs) / 2:.1f} | {sum(secs):.1f} | {max(rss):.2f} |" in report
    summary = pd.read_csv(by_runner / "results/cnn_mnist3_10pc/summary.csv")
    row = summary[(summary.method == "loo-scratch") & (summary.num_ckpts == 2) & (summary.p_type == "t")].iloc[0]
    assert f"| loo-scratch | {row.frac_sigma_above_abs_mu:.3f} |" in report
    assert "`loo-scratch`: " in report and "have FDR-adjusted p < 0.05" in report
    assert "Who the stable pairs are" in report and "| all | 27000 |" in report  # 30 train x 900 test images
    tau = torch.stack([torch.load(score_file(by_runner, "cnn", "loo-scratch", "mnist3", 10, s), weights_only=False)["scores"]
                       for s in map(int, SEED_IDS)])  # fmt: skip
    assert (
        f"| loo-scratch | float32 | {(tau == 0).double().mean():.3f} | {(tau.abs() < 1e-6).double().mean():.3f} |"
        in report
    )
    assert f"| loo-scratch | 2 | {common_share(tau[:, -2:].numpy()):.3f} |" in report  # seeds x last 2 checkpoints
    # --compare (claim (d), noise sources): the same numbers, plus mean abs(μ), mean and median σ² from the μ, σ tables
    proc = sh(["report_experiment.py", "--compare", "cnn_mnist3_10pc", "--num_ckpts", "2", "--methods", "loo-scratch",
               "--out_root", str(by_runner)], data_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    mu = pd.read_csv(by_runner / "results/cnn_mnist3_10pc/mu/loo-scratch_k2.csv", index_col=0).to_numpy()
    sigma = pd.read_csv(by_runner / "results/cnn_mnist3_10pc/sigma/loo-scratch_k2.csv", index_col=0).to_numpy()
    paper = summary[(summary.method == "loo-scratch") & (summary.num_ckpts == 2) & (summary.p_type == "paper")].iloc[0]
    assert (f"| loo-scratch | cnn_mnist3_10pc | {paper.mean_p:.3g} | {row.mean_p:.3g} | "
            f"{row.frac_sigma_above_abs_mu:.3g} | {abs(mu).mean():.3g} | {(sigma**2).mean():.3g} | "
            f"{np.median(sigma**2):.3g} | 1 | 1 |") in proc.stdout  # fmt: skip
    assert f"| cnn_mnist3_10pc | 2 | {sum(accs) / 2:.2f} |" in proc.stdout
    bad = sh(["report_experiment.py", "--experiment", "cnn_mnist3_30pc", "--out_root", str(by_runner)], data_root)
    assert (
        bad.returncode == 2
        and "lacks finished step-3 results" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )


def test_gpus_that_torch_does_not_see_are_an_error_not_a_cpu_run(tmp_path, data_root):
    gpus = str(torch.cuda.device_count())  # one past the last visible GPU: "0" on a CPU-only machine
    proc = sh(["run_experiment.py", *TINY, "--out_root", str(tmp_path), "--gpus", gpus], data_root)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"--gpus {gpus}: torch sees" in proc.stderr and "--gpus none" in proc.stderr
    assert not (tmp_path / "models").exists()  # refused before any task ran


def test_distributional_step_reads_back_the_experiment(by_runner, data_root):
    """Step 5 on the runner's experiment: its base losses plus loo-scratch's τ are the losses of a retrain without
    z_j (one retrain, the slow reference), and its refusals are one line with exit status 2."""
    from bayestda.analysis import distributional
    from bayestda.analysis.statistics import load_experiment
    from bayestda.runs import retrains
    from bayestda.runs.samples import load_seed_samples

    args = ["compute_distributional.py", "--experiment", "cnn_mnist3_10pc", "--num_ckpts", "2", "--seed_ids",
            *SEED_IDS, "--out_root", str(by_runner)]  # fmt: skip
    proc = sh([*args, "--methods", "loo-scratch,gd"], data_root)  # gd: Δmean only, by default
    assert proc.returncode == 0, proc.stderr
    assert "Ground truth: the top 1% of pairs by |Δmean| and by W2 overlap" in proc.stdout
    assert "gd: not in loss units, so scored on the ranking of Δmean only" in proc.stdout
    truth = pd.read_csv(by_runner / "results/cnn_mnist3_10pc/distributional/ground_truth.csv")
    mu = pd.read_csv(by_runner / "results/cnn_mnist3_10pc/mu/loo-scratch_k2.csv", index_col=0).to_numpy()
    np.testing.assert_allclose(truth["dmean"].to_numpy(), mu.ravel(), rtol=1e-5, atol=1e-7)

    seeds = [read_seeds()[int(k)] for k in SEED_IDS]
    exp = load_experiment("cnn", "mnist3", 10, by_runner, ["loo-scratch"], seeds)
    base = distributional.base_losses(exp, data_root, k=1)  # the last checkpoint
    samples = load_seed_samples("cnn", "mnist3", 10, exp.seeds[0], by_runner, data_root)
    ctx = retrains.retrain_context(samples, "cpu")
    retrained = retrains.run_retrain(ctx, retrains.Retrain(3, zero_weight=False))[-1].double().numpy()
    np.testing.assert_allclose(base[0] + exp.scores("loo-scratch")[0, -1, 3], retrained, rtol=1e-5, atol=1e-6)

    refused = sh([*args, "--methods", "loo-scratch,gd", "--measures", "dmean,w2"], data_root)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "gd is not in loss units" in refused.stderr
    missing = sh([*args, "--methods", "gd", "--measures", "dmean"], data_root)
    assert missing.returncode == 2 and "--methods loo-scratch)" in missing.stderr


def test_lds_retrains_run_through_the_runner_and_step_6_reads_them(by_runner, data_root):
    """`--methods ...,lds` adds one retrain task per seed (the rest is done); each subset's losses are a retrain of
    the seed on that subset (the slow reference: one sequential retrain), and step 6's per-seed LDS of a method is
    the plain scipy loop over the files."""
    from scipy import stats

    from bayestda.core.paths import subset_retrain_file
    from bayestda.runs import retrains
    from bayestda.runs.samples import load_seed_samples

    flags = [*TINY[: TINY.index("--methods")], "--methods", "gd,loo-scratch,lds", "--lds_subsets", "6",
             "--out_root", str(by_runner), "--jobs", "2", "--gpus", "none"]  # fmt: skip
    proc = sh(["run_experiment.py", *flags], data_root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 task(s) to run" in proc.stdout and "compute_lds.py --experiment cnn_mnist3_10pc" in proc.stdout
    again = sh(["run_experiment.py", *flags], data_root)
    assert "every task is already done" in again.stdout

    record = torch.load(subset_retrain_file(by_runner, "cnn", "mnist3", 10, read_seeds()[0]), weights_only=True)
    assert record["losses"].shape == (6, 2, 900) and record["ckpt_epochs"] == [1, 2]
    samples = load_seed_samples("cnn", "mnist3", 10, read_seeds()[0], by_runner, data_root)
    ctx = retrains.retrain_context(samples, "cpu")
    members = tuple(record["members"][4].nonzero().view(-1).tolist())
    retrained = retrains.run_retrains(ctx, [retrains.Retrain(None, members=members)], 1, "")[0]
    torch.testing.assert_close(record["losses"][4], retrained, rtol=1e-6, atol=1e-7)
    assert record["config"]["diagnostics"]["max_abs_full_retrain_minus_checkpoint_test_loss"] < 1e-4

    step6 = ["compute_lds.py", "--experiment", "cnn_mnist3_10pc", "--num_ckpts", "2", "--seed_ids", *SEED_IDS,
             "--bootstrap", "50", "--out_root", str(by_runner)]  # fmt: skip
    proc = sh(step6, data_root)
    assert proc.returncode == 0, proc.stderr
    assert (
        "LDS over 6 subsets of 15/30 (k=2, 2 seeds, 900 test points)" in proc.stdout and "Noise ceilings" in proc.stdout
    )
    res = by_runner / "results/cnn_mnist3_10pc/lds"
    table = pd.read_csv(res / "lds.csv")
    assert sorted(table["method"].unique()) == ["gd", "loo-scratch"] and (res / "figures/lds.png").is_file()
    frame = pd.read_csv(res / "per_test_point.csv", index_col=0)
    losses = [torch.load(subset_retrain_file(by_runner, "cnn", "mnist3", 10, read_seeds()[int(k)]),
                         weights_only=True)["losses"].double().mean(1).numpy() for k in SEED_IDS]  # fmt: skip
    taus = [torch.load(score_file(by_runner, "cnn", "loo-scratch", "mnist3", 10, read_seeds()[int(k)]),
                       weights_only=True)["scores"].double().mean(0).numpy() for k in SEED_IDS]  # fmt: skip
    left_out = ~record["members"].numpy()
    for z in (0, 17, 450, 899):
        rhos = [stats.spearmanr([tau[left_out[m], z].sum() for m in range(6)], loss[:, z]).statistic
                for tau, loss in zip(taus, losses, strict=True)]  # fmt: skip
        assert frame.loc[frame.index[z], "loo-scratch/per-seed"] == pytest.approx(np.nanmean(rhos), abs=1e-5)
    assert "up to date, skipped" in sh(step6, data_root).stdout
