"""train_cnn.py as a user runs it: resume, --overwrite, interrupted runs, and one-line errors."""

from __future__ import annotations

import json
import os
import stat
from io import BytesIO

import pytest
import torch
from helpers import one_line_error

from bayestda.artifacts import checkpoints
from bayestda.core import io
from bayestda.core.errors import UserError
from bayestda.core.paths import REPO_ROOT, checkpoint_file, metrics_file, seed_model_dir
from bayestda.data.subsets import load_subset
from bayestda.runs import ensemble
from bayestda.training.recipe import RecipeOptions

ARGS = ["--task", "mnist3", "--num_per_class", "10", "--epochs", "6", "--device", "cpu"]


def snapshot(seed_dir):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(seed_dir.iterdir())}


def test_rerun_skips_finished_seeds_and_overwrite_redoes_them(run_script, tmp_path):
    out = ["--out_root", str(tmp_path), "--seed_id", "1"]
    first = run_script("train_cnn.py", *ARGS, *out)
    assert first.returncode == 0, first.stderr
    seed_dir = seed_model_dir(tmp_path, "cnn", "mnist3", 10, 1)
    assert sorted(p.name for p in seed_dir.iterdir()) == [f"ckpt_epoch_{e}.pt" for e in range(2, 7)] + ["metrics.json"]
    assert json.loads(metrics_file(seed_dir).read_text())["threads"] >= 1  # it changes the last bits on a CPU
    before = snapshot(seed_dir)

    second = run_script("train_cnn.py", *ARGS, *out)
    assert second.returncode == 0 and "skipped" in second.stdout
    assert snapshot(seed_dir) == before  # nothing rewritten

    third = run_script("train_cnn.py", *ARGS, *out, "--overwrite")
    assert third.returncode == 0 and "skipped" not in third.stdout
    after = snapshot(seed_dir)
    assert all(after[name][0] > before[name][0] for name in before)  # rewritten ...
    for name in before:
        if name.endswith(".pt"):  # ... with bit-identical weights (CPU determinism across processes)
            old = torch.load(BytesIO(before[name][1]), weights_only=True)["state_dict"]
            new = torch.load(seed_dir / name, weights_only=True)["state_dict"]
            assert all(torch.equal(old[k], new[k]) for k in old)

    changed = run_script("train_cnn.py", *ARGS[:-4], "--epochs", "7", "--device", "cpu", *out)
    one_line_error(changed, "other settings", "epochs", "--overwrite")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt_epoch_15.pt"

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(io.torch, "save", dying_save)
    with pytest.raises(OSError):
        io.atomic_torch_save({"x": 1}, target)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_is_refused_downstream_and_finished_on_rerun(data_root, tmp_path, monkeypatch):
    train_data = load_subset("mnist3", "train", 10, data_root, REPO_ROOT)
    test_data = load_subset("mnist3", "test", None, data_root, REPO_ROOT)
    spec = ensemble.EnsembleSpec("mnist3", 10, recipe=RecipeOptions(epochs=6))
    seed_dir = seed_model_dir(tmp_path, "cnn", "mnist3", 10, 0)
    calls = {"n": 0}
    real_evaluate = ensemble.evaluate

    def killed_at_epoch_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(ensemble, "evaluate", killed_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        ensemble.train_ensemble(spec, [0], data_root, tmp_path, "cpu")
    assert checkpoint_file(seed_dir, 3).is_file() and not metrics_file(seed_dir).exists()
    with pytest.raises(UserError, match="no finished training run; make it with"):
        checkpoints.seed_checkpoints(seed_dir, "python train_cnn.py ...")

    monkeypatch.setattr(ensemble, "evaluate", real_evaluate)
    results = ensemble.train_ensemble(spec, [0], data_root, tmp_path, "cpu")
    assert results[0] is not None  # retrained, not skipped
    paths = checkpoints.seed_checkpoints(seed_dir, "")
    assert [p.name for p in paths] == [f"ckpt_epoch_{e}.pt" for e in range(2, 7)]
    reference = ensemble.train_seed(spec, 0, train_data, test_data, tmp_path / "ref", "cpu")
    assert json.loads(metrics_file(seed_dir).read_text())["epochs"] == reference["epochs"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--task", "mnist10", "--num_per_class", "10"], ["unknown task 'mnist10'", "--plugin"]),
        (["--task", "mnist3", "--num_per_class", "15"], ["no training subset with 15 per class", "make_subsets.py"]),
        (["--task", "mnist3", "--num_per_class", "10", "--seed_id", "10"], ["--seed_id 10 is out of range", "0..9"]),
        (["--task", "mnist3", "--num_per_class", "10", "--seed_id", "-1"], ["out of range"]),
        (["--task", "mnist3", "--num_per_class", "10", "--device", "cuda:7"], ["--device"]),
        (["--task", "mnist3", "--num_per_class", "10", "--epochs", "0"], ["--epochs must be at least 1"]),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(run_script, tmp_path, args, needles):
    one_line_error(run_script("train_cnn.py", *args, "--out_root", str(tmp_path)), *needles)


def test_missing_data_says_where_and_how(run_script, tmp_path):
    proc = run_script("train_cnn.py", *ARGS, "--out_root", str(tmp_path), "--data_root", str(tmp_path / "nodata"))
    one_line_error(proc, "MNIST not found", str(tmp_path / "nodata"), "BAYESTDA_DATA_ROOT")
    proc = run_script(
        "train_cnn.py",
        "--task",
        "cifar10",
        "--num_per_class",
        "10",
        "--out_root",
        str(tmp_path),
        "--data_root",
        str(tmp_path / "nodata"),
    )
    one_line_error(proc, "CIFAR-10 not found", "build_cifar10.py")


@pytest.mark.parametrize("script", ["train_cnn.py", "make_subsets.py"])
def test_help_is_complete(run_script, script):
    proc = run_script(script, "--help")
    assert proc.returncode == 0
    for flag in ["--task", "--data_root", "--out_root", "--overwrite"]:
        assert flag in proc.stdout


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_keep_the_umask(tmp_path, monkeypatch, umask):
    """An artifact gets a plain `open`'s permissions under the umask, not mkstemp's 0600 (a shared cluster reads it)."""
    old = os.umask(umask)
    try:
        monkeypatch.setattr(io, "_UMASK", io._read_umask())  # as if the process had started under this umask
        io.atomic_write_text("x", tmp_path / "a.txt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
