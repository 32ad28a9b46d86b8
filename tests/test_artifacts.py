"""Every artifact is checked against the experiment it is used for, and a bad one is refused in one line that
names the file and the command that remakes it: score files (steps 3 and 4), a seed's checkpoint set (step 2),
corrupt checkpoints, metrics.json and dataset files."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import SEEDS, run_config, write_synthetic

from bayestda.analysis.statistics import load_experiment
from bayestda.artifacts import checkpoints
from bayestda.artifacts.scores import save_scores
from bayestda.core import hints
from bayestda.core.errors import UserError
from bayestda.core.io import atomic_write_json
from bayestda.core.paths import checkpoint_file, metrics_file, score_file, seed_model_dir
from bayestda.data.subsets import load_split
from bayestda.runs import ensemble
from bayestda.runs.samples import load_seed_samples
from bayestda.training.recipe import RecipeOptions

REMAKE_GD_3 = "python tda_cnn_scripts/gd.py --model cnn --task mnist3 --num_per_class 10 --seed_id 3 --overwrite"


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def _rewrite(path, **changes):
    """Write the score file at `path` again with some of its fields changed."""
    rec = {**torch.load(path, weights_only=True), **changes}
    save_scores(path, rec["scores"], rec["train_idx"], rec["test_idx"], rec["ckpt_epochs"], rec["seed"], rec["method"],
                rec["config"], rec["sign"])  # fmt: skip


BAD_SCORE_FILES = {  # how gd's score file of seed 3 is spoilt -> what the message says
    "another architecture": (dict(config={"checkpoint_config": run_config("cnn3", 3, arch="cnn3", net="NetBWThree")}), "model 'cnn3', not 'cnn'"),
    "another posterior mode": (dict(config={"checkpoint_config": run_config("cnn-deinit", 3)}), "model 'cnn-deinit'"),
    "another n": (dict(config={"checkpoint_config": run_config(seed=3, n=20)}), "num_per_class 20, not 10"),
    "another task": (dict(config={"checkpoint_config": run_config(seed=3, task="mnist3-paper")}), "task 'mnist3-paper'"),
    "another trained seed": (dict(config={"checkpoint_config": run_config(seed=5)}), "trained seed 5, not 3"),
    "another seed field": (dict(seed=4), "seed 4, not 3"),
    "another method": (dict(method="gc"), "method 'gc', not 'gd'"),
    "another run length": (
        dict(ckpt_epochs=[16, 17, 18, 19, 20], config={"checkpoint_config": run_config(seed=3, epochs=20)}),
        "the checkpoints of epochs [16, 17, 18, 19, 20], unlike 9 of the 10 score files (epochs [11, 12, 13, 14, 15])",
    ),
    "fewer checkpoints": (
        dict(ckpt_epochs=[13, 14, 15], scores=torch.zeros(3, 6, 4)), "the checkpoints of epochs [13, 14, 15]"
    ),
    "other training settings": (dict(config={"checkpoint_config": run_config(seed=3, lr=0.01)}), "(lr differ)"),
    "no checkpoint config": (dict(config={"wall_time_s": 1.0}), "no checkpoint_config"),
    "other indices": (dict(train_idx=torch.arange(6)), "other train/test indices"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SCORE_FILES))
def test_a_score_file_of_another_experiment_is_refused(tmp_path, case):
    changes, needle = BAD_SCORE_FILES[case]
    write_synthetic(tmp_path, methods=["gd", "gc"], seeds=SEEDS[:5])
    path = score_file(tmp_path, "cnn", "gd", "mnist3", 10, 3)
    _rewrite(path, **changes)
    with pytest.raises(UserError) as err:
        load_experiment("cnn", "mnist3", 10, tmp_path, ["gd", "gc"], SEEDS[:5])
    msg = _one_line(err)
    assert str(path) in msg and needle in msg and REMAKE_GD_3 in msg


def _save_raw(path, obj):
    torch.save(obj, path)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


CORRUPT_SCORE_FILES = {
    "truncated": (_truncate, "cannot be read"),
    "empty": (lambda p: p.write_bytes(b""), "cannot be read"),
    "a bare tensor": (lambda p: _save_raw(p, torch.zeros(5, 6, 4)), "holds a Tensor, not a score-file dict"),
    "indices as a list": (
        lambda p: _save_raw(p, {**torch.load(p, weights_only=True), "train_idx": list(range(100, 106))}),
        "train_idx must be a 1-D integer tensor, not list",
    ),
    "no sign": (lambda p: _save_raw(p, {k: v for k, v in torch.load(p, weights_only=True).items() if k != "sign"}), "lacks sign"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPT_SCORE_FILES))
def test_a_corrupt_or_foreign_score_file_is_one_line(tmp_path, case):
    spoil, needle = CORRUPT_SCORE_FILES[case]
    write_synthetic(tmp_path, methods=["gd"], seeds=SEEDS[:5])
    path = score_file(tmp_path, "cnn", "gd", "mnist3", 10, 3)
    spoil(path)
    with pytest.raises(UserError) as err:
        load_experiment("cnn", "mnist3", 10, tmp_path, ["gd"], SEEDS[:5])
    msg = _one_line(err)
    assert str(path) in msg and needle in msg and REMAKE_GD_3 in msg


def test_scores_of_a_run_retrained_since_are_refused(tmp_path):
    write_synthetic(tmp_path, methods=["gd"], seeds=SEEDS[:3])
    seed_dir = seed_model_dir(tmp_path, "cnn", "mnist3", 10, 1)
    atomic_write_json({"config": run_config(seed=1)}, metrics_file(seed_dir))
    load_experiment("cnn", "mnist3", 10, tmp_path, ["gd"], SEEDS[:3])  # the run they scored: accepted
    atomic_write_json({"config": run_config(seed=1, epochs=20)}, metrics_file(seed_dir))
    with pytest.raises(UserError) as err:
        load_experiment("cnn", "mnist3", 10, tmp_path, ["gd"], SEEDS[:3])
    assert "earlier training run of seed 1" in _one_line(err) and "--seed_id 1 --overwrite" in str(err.value)


def test_hints_keep_the_users_location_flags(tmp_path):
    write_synthetic(tmp_path, methods=["gd"], seeds=SEEDS[:3])
    _rewrite(score_file(tmp_path, "cnn", "gd", "mnist3", 10, 2), seed=1)

    class Flags:
        out_root, data_root, paper_subsets_dir = str(tmp_path / "my runs"), "/data", None

    hints.remember(Flags)
    try:
        with pytest.raises(UserError) as err:
            load_experiment("cnn", "mnist3", 10, tmp_path, ["gd"], SEEDS[:3])
    finally:
        hints.forget()
    assert f"--seed_id 2 --overwrite --out_root '{tmp_path / 'my runs'}' --data_root /data" in _one_line(err)


def test_retrain_command_names_the_seed_line_or_says_what_is_missing(tmp_path):
    assert checkpoints.retrain_command(seed_model_dir(tmp_path, "cnn3", "cifar10", 50, SEEDS[3])) == (
        "python train_cnn.py --task cifar10 --num_per_class 50 --arch cnn3 --posterior de --seed_id 3 --overwrite"
    )
    gone = checkpoints.retrain_command(seed_model_dir(tmp_path, "cnn", "mnist3", 10, 987654321))
    assert "--seed_id K --overwrite" in gone and "seed 987654321 in seeds.txt" in gone
    assert "step-1 command that made it" in checkpoints.retrain_command(tmp_path / "elsewhere" / "0")


# ----------------------------------------------------------------------------- a seed's training run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """Seeds 0 and 1 of cnn MNIST3-10pc, 6 epochs."""
    out = tmp_path_factory.mktemp("trained")
    spec = ensemble.EnsembleSpec("mnist3", 10, recipe=RecipeOptions(epochs=6))
    ensemble.train_ensemble(spec, [0, 1], data_root, out, "cpu")
    return out


@pytest.fixture
def run_dir(trained, tmp_path):
    """A copy of the trained runs that a test may spoil."""
    shutil.copytree(trained, tmp_path / "out")
    return tmp_path / "out"


RETRAIN_0 = "python train_cnn.py --task mnist3 --num_per_class 10 --arch cnn2 --posterior de --seed_id 0 --overwrite"


def _ckpt(out, seed, epoch):
    return checkpoint_file(seed_model_dir(out, "cnn", "mnist3", 10, seed), epoch)


BAD_RUNS = {  # how seed 0's folder is spoilt -> what the message says
    "truncated checkpoint": (lambda out: _truncate(_ckpt(out, 0, 4)), "ckpt_epoch_4.pt cannot be read"),
    "checkpoint of another epoch": (
        lambda out: shutil.copy(_ckpt(out, 0, 5), _ckpt(out, 0, 4)),
        "ckpt_epoch_4.pt is not of the run",
    ),
    "checkpoint of another seed's run": (
        lambda out: shutil.copy(_ckpt(out, 1, 4), _ckpt(out, 0, 4)),
        "(batch_seed, init_seed, seed differ)",
    ),
    "not a checkpoint": (lambda out: torch.save({"weights": 1}, _ckpt(out, 0, 6)), "is not a bayestda checkpoint"),
    "empty metrics.json": (lambda out: metrics_file(_ckpt(out, 0, 6).parent).write_text(""), "empty or corrupt"),
    "garbage metrics.json": (
        lambda out: metrics_file(_ckpt(out, 0, 6).parent).write_bytes(b"\x00\xff{"),
        "empty or corrupt",
    ),
    "metrics.json without a config": (
        lambda out: metrics_file(_ckpt(out, 0, 6).parent).write_text("[]"),
        "not a bayestda metrics.json",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_a_seed_folder_that_is_not_one_readable_run_is_refused_by_steps_1_and_2(run_dir, data_root, case):
    spoil, needle = BAD_RUNS[case]
    spoil(run_dir)
    with pytest.raises(UserError) as err:  # step 2
        load_seed_samples("cnn", "mnist3", 10, 0, run_dir, data_root)
    assert needle in _one_line(err) and RETRAIN_0 in str(err.value)
    spec = ensemble.EnsembleSpec("mnist3", 10, recipe=RecipeOptions(epochs=6))
    with pytest.raises(UserError) as err:  # step 1: not "already trained, skipped"
        ensemble.train_ensemble(spec, [0], data_root, run_dir, "cpu")
    assert needle in _one_line(err) and RETRAIN_0 in str(err.value)
    ensemble.train_ensemble(spec, [0], data_root, run_dir, "cpu", overwrite=True)  # what the message says to do
    assert len(load_seed_samples("cnn", "mnist3", 10, 0, run_dir, data_root).checkpoints) == 5


def test_retraining_with_another_run_length_leaves_no_old_checkpoint(run_dir, data_root):
    seed_dir = seed_model_dir(run_dir, "cnn", "mnist3", 10, 0)
    ensemble.train_ensemble(ensemble.EnsembleSpec("mnist3", 10, recipe=RecipeOptions(epochs=4)), [0], data_root, run_dir, "cpu",
                            overwrite=True)  # fmt: skip
    assert sorted(p.name for p in seed_dir.iterdir()) == ["ckpt_epoch_1.pt", "ckpt_epoch_2.pt", "ckpt_epoch_3.pt",
                                                          "ckpt_epoch_4.pt", "metrics.json"]  # fmt: skip
    assert checkpoints.read_run(seed_dir, "")[0]["config"]["epochs"] == 4


# ----------------------------------------------------------------------------- datasets


def _copy_dataset(src, dst, spoil_name):
    """Links to the real files, but for one that holds garbage."""
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            if f.name == spoil_name:
                (dst / f.relative_to(src)).write_bytes(b"not a dataset file")
            else:
                (dst / f.relative_to(src)).symlink_to(f.resolve())


@pytest.mark.parametrize(
    ("task", "folder", "spoil_name"),
    [("mnist3", "MNIST", "t10k-images-idx3-ubyte"), ("cifar10", "cifar-10-batches-py", "test_batch")],
)
def test_dataset_files_present_but_unreadable_are_corrupt_not_missing(data_root, cifar_root, tmp_path, task, folder,
                                                                      spoil_name):  # fmt: skip
    src = (data_root if task == "mnist3" else cifar_root) / folder
    _copy_dataset(src, tmp_path / "data" / folder, spoil_name)
    load_split.cache_clear()
    with pytest.raises(UserError) as err:
        load_split(task, False, tmp_path / "data")
    msg = _one_line(err)
    assert "cannot be read" in msg and spoil_name in msg and "not found" not in msg
    load_split.cache_clear()
    with pytest.raises(UserError, match="not found"):
        load_split(task, False, tmp_path / "nothing here")
    load_split.cache_clear()
