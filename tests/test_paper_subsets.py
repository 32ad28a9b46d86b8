"""`--subsets paper`: the original code's index files, read in place and used as the original used them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import one_line_error

from bayestda.core.errors import UserError
from bayestda.core.paths import REPO_ROOT, results_dir, score_file, seed_model_dir
from bayestda.data import sources
from bayestda.data import subsets as data
from bayestda.pipeline.graph import ExperimentSpec, build_graph

SHARED_PAPER_SUBSETS = REPO_ROOT.parent / "shared" / "paper_subsets"
PAPER_SIZES = {"mnist3": (10, 20, 50), "cifar10": (10, 20, 30, 40, 50, 60)}


@pytest.fixture
def paper_dir(monkeypatch):
    """The original's data/ folder (CI: ../shared/paper_subsets), as --paper_subsets_dir would set it."""
    if not (SHARED_PAPER_SUBSETS / "mnist3").is_dir():
        pytest.skip(f"the original's index files are not at {SHARED_PAPER_SUBSETS}")
    monkeypatch.setenv(data.PAPER_SUBSETS_ENV, str(SHARED_PAPER_SUBSETS))
    return SHARED_PAPER_SUBSETS


def file_indices(task, name):
    return np.array([int(line) for line in (SHARED_PAPER_SUBSETS / task / name).read_text().split()])


def check_split(task, split, n, root):
    """A paper subset is its file's indices in file order, with images and labels of the right split."""
    sub = data.load_subset(data.task_name(task, "paper"), split, n, root, REPO_ROOT)
    idx = file_indices(task, f"train_subset_{n}pc.txt" if split == "train" else "test_subset.txt")
    images, labels = data.load_split(task, split == "train", root)
    assert torch.equal(sub.idx, torch.from_numpy(idx))
    assert torch.equal(sub.y, torch.from_numpy(labels[idx].astype(np.int64)))
    assert torch.equal(sub.x, data.preprocess(task, images[idx]))
    return sub


def test_mnist3_paper_subsets_have_the_right_sizes_and_split(paper_dir, data_root):
    for n in PAPER_SIZES["mnist3"]:
        sub = check_split("mnist3", "train", n, data_root)
        assert np.bincount(sub.y.numpy()).tolist() == [n, n, n]  # balanced, as the README says
    test = check_split("mnist3", "test", None, data_root)
    assert np.bincount(test.y.numpy()).tolist() == [300, 300, 300]
    # Not this package's nested draw: the original's own images.
    assert not np.array_equal(test.idx.numpy(), data.subset_indices("mnist3", "test", None, REPO_ROOT))


def test_cifar10_paper_subsets_warn_with_class_counts_and_jpeg_images(paper_dir, cifar_root, capfd):
    data._warn_once.cache_clear()
    sub = check_split("cifar10", "train", 10, cifar_root)
    assert len(sub) == 100
    err = capfd.readouterr().err
    _, train_labels = data.load_split("cifar10", True, cifar_root)
    counts = np.bincount(train_labels[file_indices("cifar10", "train_subset_10pc.txt")], minlength=10)
    assert counts.min() < counts.max()  # the file was drawn from test labels, so its train labels are unbalanced
    expected = " ".join(f"{c}:{k}" for c, k in enumerate(counts))
    assert f"cifar10 10pc train subset is unbalanced, as in the original code (class: count {expected})" in err
    approx = int((sub.idx.numpy() % 10_000 >= 761).sum())  # outside the exact prefix of their batch
    jpeg = f"{approx} of the 100 images of the paper's cifar10 10pc train subset are JPEG-approximate"
    assert (jpeg in err) == (sources.unverified_cifar10(cifar_root))  # said for the offline copy only
    # A balanced file warns about nothing but the JPEG images.
    check_split("cifar10", "train", 20, cifar_root)
    assert "unbalanced" not in capfd.readouterr().err


def test_paper_and_nested_runs_write_to_different_paths(paper_dir, run_script, tmp_path):
    paper, nested = data.task_name("mnist3", "paper"), "mnist3"
    assert paper == "mnist3-paper"
    for where in (
        lambda t: seed_model_dir(tmp_path, "cnn", t, 10, 0),
        lambda t: score_file(tmp_path, "cnn", "gd", t, 10, 0),
        lambda t: results_dir(tmp_path, "cnn", t, 10),
    ):
        assert where(paper) != where(nested)
    common = [
        "--task",
        "mnist3",
        "--num_per_class",
        "10",
        "--seed_id",
        "0",
        "--epochs",
        "1",
        "--out_root",
        str(tmp_path),
    ]
    for flags in (["--subsets", "paper", "--paper_subsets_dir", str(paper_dir)], []):
        proc = run_script("train_cnn.py", *common, *flags)
        assert proc.returncode == 0, proc.stderr
    configs = {t: json.loads((seed_model_dir(tmp_path, "cnn", t, 10, 0) / "metrics.json").read_text())["config"]
               for t in (paper, nested)}  # fmt: skip
    assert configs[paper]["task"] == paper and configs[paper]["train_idx_sha1"] != configs[nested]["train_idx_sha1"]
    # The step-2 scripts find the paper run by the same flags, and write beside it.
    proc = run_script("tda_cnn_scripts/gd.py", *common[:-4], "--out_root", str(tmp_path), "--subsets", "paper",
                      "--paper_subsets_dir", str(paper_dir))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = torch.load(score_file(tmp_path, "cnn", "gd", paper, 10, 0), weights_only=True)
    assert record["train_idx"].tolist() == file_indices("mnist3", "train_subset_10pc.txt").tolist()
    assert not score_file(tmp_path, "cnn", "gd", nested, 10, 0).exists()


def test_run_experiment_on_paper_subsets_names_and_passes_them(paper_dir, tmp_path):
    spec = ExperimentSpec("cnn", "mnist3-paper", 10, ("gd",), (0,), tmp_path)
    assert spec.name == "cnn_mnist3-paper_10pc"
    tasks = build_graph(spec)
    assert next(t for t in tasks if t.stage == "subsets").done  # nothing to write: the original's files are read
    for task in tasks[1:]:
        argv = task.command()
        assert argv[argv.index("--task") : argv.index("--task") + 4] == ["--task", "mnist3", "--subsets", "paper"]
        if task.stage in ("train", "gd"):
            assert argv[argv.index("--paper_subsets_dir") + 1] == str(paper_dir)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        ([], ["--subsets paper reads the original code's index files", "--paper_subsets_dir", "data/ folder"]),
        (["--paper_subsets_dir", "/nonexistent"], ["/nonexistent has no mnist3/ folder", "data/ folder of a clone"]),
        (["--paper_subsets_dir", str(SHARED_PAPER_SUBSETS), "--num_per_class", "30"],
         ["no train_subset_30pc.txt", "train sizes there: 10, 20, 50"]),
    ],
)  # fmt: skip
def test_missing_or_wrong_paper_subsets_dir_is_one_line(run_script, tmp_path, monkeypatch, flags, needles):
    monkeypatch.delenv(data.PAPER_SUBSETS_ENV, raising=False)
    n = [] if "--num_per_class" in flags else ["--num_per_class", "10"]
    # every step reads the files through the same loader; the runner checks them before it starts a task
    script = "run_experiment.py" if "/nonexistent" in flags else "train_cnn.py"
    proc = run_script(script, "--task", "mnist3", *n, "--subsets", "paper", *flags, "--out_root", str(tmp_path),
                      env={data.PAPER_SUBSETS_ENV: ""})  # fmt: skip
    one_line_error(proc, *needles)
    assert proc.returncode == 2 and not any(tmp_path.iterdir())


def test_paper_subset_labels_outside_the_task_are_refused(tmp_path, monkeypatch, data_root):
    (tmp_path / "mnist3").mkdir()
    (tmp_path / "mnist3" / "train_subset_10pc.txt").write_text("0\n1\n")  # train labels 5 and 0
    monkeypatch.setenv(data.PAPER_SUBSETS_ENV, str(tmp_path))
    with pytest.raises(UserError, match=r"holds images of classes \[5\]"):
        data.load_subset("mnist3-paper", "train", 10, data_root, REPO_ROOT)


def test_make_subsets_on_paper_subsets_describes_and_writes_nothing(paper_dir, run_script, tmp_path):
    proc = run_script("make_subsets.py", "--task", "mnist3", "--subsets", "paper", "--paper_subsets_dir",
                      str(paper_dir), "--out_root", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        f"{3 * n} train images, per class {n} {n} {n} (the original's file, used in place)" for n in (10, 20, 50)
    ] + ["900 test images, per class 300 300 300 (the original's file, used in place)"]
    assert not any(tmp_path.iterdir())
