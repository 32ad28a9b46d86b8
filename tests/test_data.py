"""Subsets (balanced, nested, right split, right labels), preprocessing and dataset loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torchvision import transforms

from bayestda.core.errors import UserError
from bayestda.core.paths import REPO_ROOT
from bayestda.data import sources
from bayestda.data import subsets as data
from bayestda.data.tasks import get_task


def committed(task, name):
    return data.read_indices(REPO_ROOT / "data" / task / name)


def check_subsets(task, root):
    spec = get_task(task)
    _, train_labels = data.load_split(task, True, root)
    _, test_labels = data.load_split(task, False, root)
    previous = set()
    for n in data.SUBSET_SIZES:
        idx = committed(task, f"train_subset_{n}pc.txt")
        assert len(np.unique(idx)) == len(idx) == n * len(spec.classes)
        assert idx.min() >= 0 and idx.max() < len(train_labels)  # indices into the train split
        counts = np.bincount(train_labels[idx], minlength=10)
        assert counts[list(spec.classes)].tolist() == [n] * len(spec.classes)  # balanced, right labels
        assert counts.sum() == len(idx)  # no other class sneaks in
        assert previous <= set(idx.tolist())  # nested
        previous = set(idx.tolist())
    test_idx = committed(task, "test_subset.txt")
    assert len(np.unique(test_idx)) == len(test_idx) == spec.test_per_class * len(spec.classes)
    assert test_idx.max() < len(test_labels)
    counts = np.bincount(test_labels[test_idx], minlength=10)
    assert counts[list(spec.classes)].tolist() == [spec.test_per_class] * len(spec.classes)
    assert counts.sum() == len(test_idx)


def test_mnist3_subsets_balanced_nested_and_labelled(data_root):
    check_subsets("mnist3", data_root)


def test_cifar10_subsets_balanced_nested_and_labelled(cifar_root):
    check_subsets("cifar10", cifar_root)


def test_cifar10_subsets_use_only_exactly_reproduced_images():
    for name in [f"train_subset_{n}pc.txt" for n in data.SUBSET_SIZES] + ["test_subset.txt"]:
        idx = committed("cifar10", name)
        assert (idx % sources.CIFAR_BATCH_SIZE < sources.CIFAR_EXACT_PER_BATCH).all(), name


@pytest.mark.parametrize("task", ["mnist3", "cifar10"])
def test_make_subsets_reproduces_committed_files(task, data_root, tmp_path, request):
    root = request.getfixturevalue("cifar_root") if task == "cifar10" else data_root
    report = data.write_subsets(task, root, tmp_path)
    assert all("written" in line for line in report)
    for path in (tmp_path / "data" / task).iterdir():
        assert path.read_text() == (REPO_ROOT / "data" / task / path.name).read_text(), path.name
    # a rerun finds everything up to date; a changed file is refused unless overwrite
    assert all("up to date" in line for line in data.write_subsets(task, root, tmp_path))
    victim = tmp_path / "data" / task / "test_subset.txt"
    victim.write_text("0\n")
    with pytest.raises(UserError, match="--overwrite"):
        data.write_subsets(task, root, tmp_path)
    data.write_subsets(task, root, tmp_path, overwrite=True)
    assert victim.read_text() == (REPO_ROOT / "data" / task / "test_subset.txt").read_text()


def test_any_size_nests_and_all_is_the_whole_split(data_root, tmp_path):
    """Sizes beyond the committed 10–60 per class are drawn from the same per-class orders, so they nest around
    them; `all` is every image of the task's classes."""
    report = data.write_subsets("mnist3", data_root, tmp_path, sizes=(60, 1000, "all"))
    assert len(report) == 4 and all("written" in line for line in report)
    _, labels = data.load_split("mnist3", True, data_root)
    sixty, thousand, whole = (data.read_indices(tmp_path / "data" / "mnist3" / f"train_subset_{n}pc.txt")
                              for n in (60, 1000, "all"))  # fmt: skip
    assert np.array_equal(sixty, committed("mnist3", "train_subset_60pc.txt"))
    assert set(sixty) <= set(thousand) <= set(whole)
    assert np.bincount(labels[thousand]).tolist() == [1000, 1000, 1000]
    assert np.array_equal(whole, np.flatnonzero(labels < 3))  # the whole split's digits 0, 1, 2
    assert data.available_sizes(tmp_path, "mnist3") == [10, 20, 30, 40, 50, 60, 1000, "all"]
    with pytest.raises(UserError, match=r"class 0 has only 5923 candidate images .* ask for at most 5923, or all"):
        data.write_subsets("mnist3", data_root, tmp_path, sizes=(6000,))


def test_preprocess_matches_torchvision_transforms(data_root):
    images, _ = data.load_split("mnist3", True, data_root)
    ours = data.preprocess("mnist3", images[:5])
    to_tensor = transforms.ToTensor()
    from PIL import Image

    ref = torch.stack([to_tensor(Image.fromarray(im, mode="L")) for im in images[:5]])
    assert torch.equal(ours, ref)

    rgb = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    cifar_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    ref = torch.stack([cifar_tf(Image.fromarray(im)) for im in rgb])
    assert torch.equal(data.preprocess("cifar10", rgb), ref)


def test_load_subset_tensors(data_root):
    sub = data.load_subset("mnist3", "train", 10, data_root, REPO_ROOT)
    assert sub.x.shape == (30, 1, 28, 28) and sub.x.dtype == torch.float32
    assert 0.0 <= sub.x.min() and sub.x.max() <= 1.0
    assert torch.equal(sub.idx, torch.from_numpy(committed("mnist3", "train_subset_10pc.txt")))
    assert sorted(sub.y.unique().tolist()) == [0, 1, 2]


def _fake_cifar(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8), "labels": list(range(n_per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


@pytest.mark.parametrize("train", [True, False])
def test_mnist_files_read_as_torchvision_reads_them(data_root, train):
    from torchvision.datasets import MNIST

    images, labels = sources.mnist(train, data_root)
    ref = MNIST(str(data_root), train=train, download=False)
    assert images.dtype == ref.data.numpy().dtype and labels.dtype == ref.targets.numpy().dtype
    assert np.array_equal(images, ref.data.numpy()) and np.array_equal(labels, ref.targets.numpy())


def test_unverified_cifar_copy_loads_with_a_warning(tmp_path, capfd):
    _fake_cifar(tmp_path)
    images, labels = sources.cifar10(True, tmp_path)
    assert images.shape == (20, 32, 32, 3) and labels.tolist() == [0, 1, 2, 3] * 5
    assert "UNVERIFIED" in capfd.readouterr().err


def test_missing_dataset_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(UserError, match=r"MNIST not found: looked for .*MNIST.*raw.*BAYESTDA_DATA_ROOT"):
        sources.mnist(True, tmp_path)
    with pytest.raises(UserError, match=r"CIFAR-10 not found: .*build_cifar10.py"):
        sources.cifar10(True, tmp_path / "nothing")


def test_unknown_task_and_missing_subset_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown task"):
        get_task("mnist10")
    with pytest.raises(
        UserError, match=r"no training subset with 15 per class .*make_subsets.py --task mnist3 --num_per_class 15"
    ):
        data.subset_indices("mnist3", "train", 15, tmp_path)


def test_cifar10_subset_pixels_equal_the_exact_reference(cifar_root):
    """The offline copy is JPEG-degraded except for a prefix of each batch; our subsets live in that prefix."""
    from conftest import SHARED_DATASETS

    ref_file = SHARED_DATASETS / "cifar10" / "labels_and_exact_prefix.npz"
    if not ref_file.is_file():
        pytest.skip(f"{ref_file} not available")
    ref = np.load(ref_file)
    for split, name in [(True, "train_subset_60pc.txt"), (False, "test_subset.txt")]:
        images, _ = data.load_split("cifar10", split, cifar_root)
        for i in committed("cifar10", name):
            batch = f"data_batch_{i // sources.CIFAR_BATCH_SIZE + 1}" if split else "test_batch"
            exact = ref[f"{batch}_exact_prefix"][i % sources.CIFAR_BATCH_SIZE].reshape(3, 32, 32).transpose(1, 2, 0)
            assert np.array_equal(images[i], exact)
