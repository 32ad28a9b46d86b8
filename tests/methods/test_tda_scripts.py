"""The step-2 scripts end to end: trained seeds in, contract-conforming score files out, then step 3 on them."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from bayestda.core.paths import REPO_ROOT, score_file
from bayestda.data.subsets import read_indices
from bayestda.methods.cli import parse_method_args

COMMON = ["--task", "mnist3", "--num_per_class", "10", "--device", "cpu"]
SCRIPTS = {  # method -> (script, extra flags)
    "gd": ("gd.py", []),
    "gc": ("gc.py", []),
    "if-paper": ("if.py", ["--solver", "paper"]),
    "if-ggn": ("if.py", ["--solver", "ggn"]),
    "if-ekfac": ("if.py", ["--solver", "ekfac"]),
    "ud": ("ud.py", ["--chunk", "16"]),
    "loo-scratch": ("loo.py", ["--protocol", "scratch", "--workers", "2"]),
}


def run(script, *args, data_root):
    env = {**os.environ, "BAYESTDA_DATA_ROOT": str(data_root)}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args], env=env, capture_output=True, text=True, timeout=900
    )


# The same contract, more minutes: in `make test-all` (loo-scratch's script also runs in test_run_experiment).
SLOW = {"gc", "if-paper", "if-ggn", "if-ekfac", "ud", "loo-scratch"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """An out_root with seeds 0 and 1 trained for 6 epochs."""
    out = tmp_path_factory.mktemp("tda")
    for seed_id in ("0", "1"):
        proc = run(
            "train_cnn.py", *COMMON, "--epochs", "6", "--seed_id", seed_id, "--out_root", str(out), data_root=data_root
        )
        assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def scored(trained, data_root):
    """score(method): both seeds scored by the method's script, once per module -> (out_root, [stdout per seed])."""
    logs = {}

    def score(method):
        if method not in logs:
            script, extra = SCRIPTS[method]
            logs[method] = []
            for seed_id in ("0", "1"):
                proc = run(f"tda_cnn_scripts/{script}", *COMMON, *extra, "--seed_id", seed_id, "--out_root",
                           str(trained), data_root=data_root)  # fmt: skip
                assert proc.returncode == 0, proc.stderr
                logs[method].append(proc.stdout)
        return trained, logs[method]

    return score


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in SCRIPTS])
def test_scores_follow_the_contract(scored, method):
    out, logs = scored(method)
    assert all("written" in log for log in logs)
    record = torch.load(score_file(out, "cnn", method, "mnist3", 10, 1), weights_only=True)
    assert record["scores"].dtype == torch.float32 and record["scores"].shape == (5, 30, 900)
    assert record["ckpt_epochs"] == [2, 3, 4, 5, 6] and record["seed"] == 1 and record["method"] == method
    assert record["train_idx"].tolist() == read_indices(REPO_ROOT / "data/mnist3/train_subset_10pc.txt").tolist()
    assert record["test_idx"].tolist() == read_indices(REPO_ROOT / "data/mnist3/test_subset.txt").tolist()
    assert record["sign"] in (1, -1) and record["config"]["checkpoint_config"]["seed"] == 1
    assert torch.isfinite(record["scores"]).all() and record["scores"].abs().sum() > 0
    assert 0.1 < record["config"]["peak_memory_gib"]["rss"] < 4  # a torch process, within the budget
    assert record["config"]["threads"] >= 1  # it changes the last bits on a CPU
    if method == "if-paper":  # every checkpoint records how far LiSSA is from its fixed point
        assert len(record["config"]["diagnostics"]) == 5
        assert record["config"]["diagnostics"][0]["fit_if_equals_minus_c_times_gd"]["r2"] > 0.99


def test_rerun_skips_and_pvalues_run_on_the_scores(scored, data_root):
    out, _ = scored("gd")
    again = run("tda_cnn_scripts/gd.py", *COMMON, "--seed_id", "1", "--out_root", str(out), data_root=data_root)
    assert again.returncode == 0 and "skipped" in again.stdout
    proc = run("compute_pvalues.py", "--experiment", "cnn_mnist3_10pc", "--methods", "gd", "--seed_ids", "0", "1",
               "--out_root", str(out), data_root=data_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "results" / "cnn_mnist3_10pc" / "summary.csv").is_file()


def test_untrained_seed_and_unknown_model_are_one_line_errors(trained, data_root):
    out = trained
    proc = run("tda_cnn_scripts/gd.py", *COMMON, "--out_root", str(out), "--seed_id", "5", data_root=data_root)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no finished training run; make it with: python train_cnn.py --task mnist3 --num_per_class 10" in proc.stderr
    proc = run("tda_cnn_scripts/gd.py", *COMMON, "--out_root", str(out), "--model", "resnet", data_root=data_root)
    assert proc.returncode == 2 and "unknown model 'resnet'" in proc.stderr


@pytest.mark.parametrize("script", ["gd.py", "gc.py", "ats.py", "if.py", "loo.py", "trak.py", "tracin.py", "ud.py"])
def test_help(script_help, script):
    text = script_help(f"tda_cnn_scripts/{script}")
    assert "--seed_id" in text and "--model" in text


def test_if_cg_refuses_an_indefinite_system_in_one_line(trained, data_root):
    """λ = 0.01 is below -λ_min(H) of a trained CNN: a one-line error with the Lanczos estimate, no score file."""
    out = trained
    proc = run("tda_cnn_scripts/if.py", *COMMON, "--solver", "cg", "--damping", "0.01", "--seed_id", "0",
               "--out_root", str(out), data_root=data_root)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "seed 0, checkpoint of epoch 2" in message and "negative curvature" in message, message
    assert "--damping above" in message and "--solver ggn" in message
    assert not score_file(out, "cnn", "if-cg", "mnist3", 10, 0).exists()


def _if_options(*flags, model="cnn"):
    return parse_method_args("", "if", "cnn", [*COMMON, "--model", model, *flags])[1:]


def test_if_damping_defaults_come_from_the_model_family():
    """cnn: cg at the paper LiSSA's fixed point (50), ggn 0.01; logreg: the weight decay for both; a flag wins."""
    assert _if_options("--solver", "cg") == ("if-cg", _if_options("--solver", "cg")[1])
    assert _if_options("--solver", "cg")[1].damping == 50.0
    assert _if_options("--solver", "ggn")[1].damping == 0.01
    assert _if_options("--solver", "cg", "--damping", "3")[1].damping == 3.0
    assert _if_options("--solver", "cg", model="logreg")[1].damping == 5e-3
    assert _if_options("--solver", "ggn", model="logreg-deinit")[1].damping == 5e-3
    name, opts = _if_options()
    assert name == "if-paper" and opts.damping is None and opts.lissa_batch_size == 8 and opts.dtype == "float32"
    assert _if_options("--solver", "ggn")[1].dtype == "float64"
    ekfac = _if_options("--solver", "ekfac")
    assert ekfac[0] == "if-ekfac" and (ekfac[1].damping, ekfac[1].fisher, ekfac[1].dtype) == (0.01, "ggn", "float32")
    assert _if_options("--solver", "ekfac", model="logreg")[1].damping == 5e-3
    assert _if_options("--solver", "ggn")[1].fisher is None  # recorded only where it applies


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--damping", "0.1"], "--damping is for --solver ggn, cg or ekfac"),
        (["--solver", "ggn", "--fisher", "empirical"], "--fisher is for --solver ekfac"),
        (["--solver", "ekfac", "--fisher", "exact"], "--fisher"),
        (["--solver", "cg", "--damping", "0"], "--damping must be positive"),
        (["--max_iter", "0"], "--max_iter must be at least 1"),
        (["--hvp_chunk", "0"], "--hvp_chunk must be at least 1"),
        (["--hvp_chunk", "many"], "--hvp_chunk 'many': give auto or a whole number"),
        (["--chunk", "0"], "--chunk must be at least 1"),
    ],
)
def test_bad_method_flags_are_one_line_errors(capsys, flags, needle):
    with pytest.raises(SystemExit) as exit_info:
        _if_options(*flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def _suggested_command(stderr: str) -> list[str]:
    """The command an error message tells the user to run (after its last 'with: '), as argv."""
    return shlex.split(stderr.strip().rsplit("with: ", 1)[1])


@pytest.mark.slow
def test_hints_run_as_written(scored, data_root, tmp_path):
    """A seed retrained with another run length: steps 2 and 3 refuse what is stale, and the commands they
    suggest, run as written (with the user's --out_root), repair it."""
    out = tmp_path / "out"
    shutil.copytree(scored("gd")[0], out)
    shutil.rmtree(out / "results", ignore_errors=True)  # step 3 of all methods, from an earlier test
    retrain = run("train_cnn.py", *COMMON, "--epochs", "7", "--seed_id", "1", "--out_root", str(out), "--overwrite",
                  data_root=data_root)  # fmt: skip
    assert retrain.returncode == 0, retrain.stderr
    pvalues = ["compute_pvalues.py", "--experiment", "cnn_mnist3_10pc", "--methods", "gd", "--seed_ids", "0", "1",
               "--out_root", str(out)]  # fmt: skip
    stale = run(*pvalues, data_root=data_root)
    assert stale.returncode == 2 and len(stale.stderr.strip().splitlines()) == 1, stale.stderr
    assert "earlier training run of seed 1" in stale.stderr
    hint = _suggested_command(stale.stderr)
    assert hint[:2] == ["python", "tda_cnn_scripts/gd.py"] and hint[-2:] == ["--out_root", str(out)]
    fixed = run(*hint[1:], data_root=data_root)  # run from the repository root, as the README says
    assert fixed.returncode == 0, fixed.stderr
    mixed = run(*pvalues, data_root=data_root)  # seed 0 scored a 6-epoch run, seed 1 now a 7-epoch one
    assert mixed.returncode == 2 and "the checkpoints of epochs [3, 4, 5, 6, 7], unlike 1 of the 2" in mixed.stderr
    retrain_0 = run("train_cnn.py", *COMMON, "--epochs", "7", "--seed_id", "0", "--out_root", str(out), "--overwrite",
                    data_root=data_root)  # fmt: skip
    assert retrain_0.returncode == 0
    stale_0 = run(*pvalues, data_root=data_root)
    assert run(*_suggested_command(stale_0.stderr)[1:], data_root=data_root).returncode == 0
    done = run(*pvalues, data_root=data_root)
    assert done.returncode == 0, done.stderr

    untrained = run("tda_cnn_scripts/gd.py", *COMMON, "--seed_id", "4", "--out_root", str(out), data_root=data_root)
    hint = _suggested_command(untrained.stderr)
    assert hint[-2:] == ["--out_root", str(out)]
    assert run(*hint[1:], "--epochs", "6", "--seed_id", "4", data_root=data_root).returncode == 0
