"""The step-2 scripts end to end: trained seeds in, contract-conforming score files out, then step 3 on them."""

import os
import subprocess
import sys

import pytest
import torch

from bayestda.cli import Parser
from bayestda.data import read_indices
from bayestda.methods.cli import _if_flags, _if_method
from bayestda.paths import REPO_ROOT, score_file

COMMON = ["--task", "mnist3", "--num_per_class", "10", "--device", "cpu"]
SCRIPTS = {  # method -> (script, extra flags)
    "gd": ("gd.py", []),
    "gc": ("gc.py", []),
    "if-paper": ("if.py", ["--solver", "paper"]),
    "if-ggn": ("if.py", ["--solver", "ggn"]),
    "loo-scratch": ("loo.py", ["--protocol", "scratch", "--workers", "2"]),
}


def run(script, *args, data_root):
    env = {**os.environ, "BAYESTDA_DATA_ROOT": str(data_root)}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args], env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory, data_root):
    """Two seeds trained for 6 epochs, scored by each script: {method: [stdout per seed]}."""
    out = tmp_path_factory.mktemp("tda")
    for seed_id in ("0", "1"):
        proc = run(
            "train_cnn.py", *COMMON, "--epochs", "6", "--seed_id", seed_id, "--out_root", str(out), data_root=data_root
        )
        assert proc.returncode == 0, proc.stderr
    logs = {}
    for method, (script, extra) in SCRIPTS.items():
        logs[method] = []
        for seed_id in ("0", "1"):
            proc = run(
                f"tda_cnn_scripts/{script}",
                *COMMON,
                *extra,
                "--seed_id",
                seed_id,
                "--out_root",
                str(out),
                data_root=data_root,
            )
            assert proc.returncode == 0, proc.stderr
            logs[method].append(proc.stdout)
    return out, logs


@pytest.mark.parametrize("method", list(SCRIPTS))
def test_scores_follow_the_contract(scored, method):
    out, logs = scored
    assert all("written" in log for log in logs[method])
    record = torch.load(score_file(out, "cnn", method, "mnist3", 10, 1), weights_only=True)
    assert record["scores"].dtype == torch.float32 and record["scores"].shape == (5, 30, 900)
    assert record["ckpt_epochs"] == [2, 3, 4, 5, 6] and record["seed"] == 1 and record["method"] == method
    assert record["train_idx"].tolist() == read_indices(REPO_ROOT / "data/mnist3/train_subset_10pc.txt").tolist()
    assert record["test_idx"].tolist() == read_indices(REPO_ROOT / "data/mnist3/test_subset.txt").tolist()
    assert record["sign"] in (1, -1) and record["config"]["checkpoint_config"]["seed"] == 1
    assert torch.isfinite(record["scores"]).all() and record["scores"].abs().sum() > 0
    assert 0.1 < record["config"]["peak_memory_gib"]["rss"] < 4  # a torch process, within the budget
    if method == "if-paper":  # every checkpoint records how far LiSSA is from its fixed point
        assert len(record["config"]["diagnostics"]) == 5
        assert record["config"]["diagnostics"][0]["fit_if_equals_minus_c_times_gd"]["r2"] > 0.99


def test_rerun_skips_and_pvalues_run_on_the_scores(scored, data_root):
    out, _ = scored
    again = run("tda_cnn_scripts/gd.py", *COMMON, "--seed_id", "1", "--out_root", str(out), data_root=data_root)
    assert again.returncode == 0 and "skipped" in again.stdout
    proc = run("compute_pvalues.py", "--experiment", "cnn_mnist3_10pc", "--methods", ",".join(SCRIPTS), "--seeds", "0", "1",
               "--out_root", str(out), data_root=data_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "results" / "cnn_mnist3_10pc" / "summary.csv").is_file()


def test_untrained_seed_and_unknown_model_are_one_line_errors(scored, data_root):
    out, _ = scored
    proc = run("tda_cnn_scripts/gd.py", *COMMON, "--out_root", str(out), "--seed_id", "5", data_root=data_root)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no finished training run; make it with: python train_cnn.py --task mnist3 --num_per_class 10" in proc.stderr
    proc = run("tda_cnn_scripts/gd.py", *COMMON, "--out_root", str(out), "--model", "resnet", data_root=data_root)
    assert proc.returncode == 2 and "unknown model name" in proc.stderr


@pytest.mark.parametrize("script", ["gd.py", "gc.py", "ats.py", "if.py", "loo.py"])
def test_help(run_script, script):
    proc = run_script(f"tda_cnn_scripts/{script}", "--help")
    assert proc.returncode == 0 and "--seed_id" in proc.stdout and "--model" in proc.stdout


def test_if_cg_refuses_an_indefinite_system_in_one_line(scored, data_root):
    """λ = 0.01 is below -λ_min(H) of a trained CNN: a one-line error with the Lanczos estimate, no score file."""
    out, _ = scored
    proc = run("tda_cnn_scripts/if.py", *COMMON, "--solver", "cg", "--damping", "0.01", "--seed_id", "0",
               "--out_root", str(out), data_root=data_root)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "seed 0, checkpoint of epoch 2" in message and "negative curvature" in message, message
    assert "--damping above" in message and "--solver ggn" in message
    assert not score_file(out, "cnn", "if-cg", "mnist3", 10, 0).exists()


def test_if_cg_defaults_to_the_paper_lissa_fixed_point():
    p = Parser("if")
    _if_flags(p, "cnn")
    assert _if_method(p.parse_args(["--solver", "cg"]), p)[1]["damping"] == 50.0
    assert _if_method(p.parse_args(["--solver", "ggn"]), p)[1]["damping"] == 0.01
    assert _if_method(p.parse_args(["--solver", "cg", "--damping", "3"]), p)[1]["damping"] == 3.0
