"""Datasets, subset index files, and the in-memory tensors every step trains and scores on.

Images are read from a local copy (MNIST's IDX files directly, CIFAR-10 through torchvision) or downloaded by
torchvision when absent and the network allows, preprocessed as in the paper (ToTensor for MNIST; ToTensor +
Normalize(0.5, 0.5) for CIFAR-10), and kept as one tensor per split: the subsets are tiny, so no DataLoader.

Two choices of images (`--subsets`):
- `nested` (default): this package's committed index files (`make_subsets.py`): balanced, each train subset
  inside the next larger one, and on CIFAR-10 drawn from the exactly reproduced images only.
- `paper`: the original code's own index files, read from the folder the user names (`--paper_subsets_dir`,
  or `$BAYESTDA_PAPER_SUBSETS`: the `data/` folder of a clone of the original repository). They are used as
  the original used them: every train file indexes the train split, the test file the test split, so the
  CIFAR-10 10/30/40pc files (drawn from test labels) give unbalanced training sets; a warning gives the
  class counts, and how many chosen CIFAR-10 images are JPEG-approximate in the offline copy.

A task on the paper's subsets has its own artifact name, `<task>-paper` (e.g. `cnn_mnist3-paper_10pc`), so
its models, scores and results never mix with the nested ones'. `TaskSpec.name` is that artifact name.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .errors import UserError
from .io import atomic_write_text
from .paths import REPO_ROOT, find_subset_file, test_subset_file, train_subset_file

SUBSET_SIZES = (10, 20, 30, 40, 50, 60)
SUBSET_RNG_SEED = 20231210  # fixed: the committed index files are regenerated bit for bit from it

# The offline CIFAR-10 copy (../shared/datasets/build_cifar10.py) has exact pixels for the first 761
# images of every 10,000-image batch and JPEG-degraded pixels elsewhere. Subsets are drawn from those
# exact images only, so results here equal results on the official release. Batches are already in
# random order, so this is still a uniform random draw per class.
CIFAR_EXACT_PER_BATCH = 761
CIFAR_BATCH_SIZE = 10_000


SUBSETS = ("nested", "paper")  # --subsets choices; the first is the default
PAPER_SUBSETS_ENV = "BAYESTDA_PAPER_SUBSETS"
PAPER_REPO = "github.com/ElisaNguyen/bayesian-tda"


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the artifact name: the task, with `-paper` on the paper's subsets
    dataset: str  # "mnist" or "cifar10"
    classes: tuple[int, ...]
    test_per_class: int
    epochs: int  # the paper's training budget
    image_shape: tuple[int, int, int]  # channels, height, width
    num_outputs: int = 10  # the paper keeps 10 logits for MNIST3 too
    subsets: str = "nested"

    @property
    def task(self) -> str:
        """The --task value."""
        return self.name.removesuffix(f"-{self.subsets}")

    @property
    def argv(self) -> list[str]:
        """--task and, if not the default, --subsets: the flags that name this task in a command."""
        return ["--task", self.task, *(["--subsets", self.subsets] if self.subsets != SUBSETS[0] else [])]


TASKS = {
    "mnist3": TaskSpec("mnist3", "mnist", (0, 1, 2), test_per_class=300, epochs=15, image_shape=(1, 28, 28)),
    "cifar10": TaskSpec("cifar10", "cifar10", tuple(range(10)), test_per_class=50, epochs=30, image_shape=(3, 32, 32)),
}


def task_name(task: str, subsets: str = SUBSETS[0]) -> str:
    """The artifact name of a --task on a choice of --subsets: `mnist3`, or `mnist3-paper`."""
    return task if subsets == SUBSETS[0] else f"{task}-{subsets}"


def get_task(task: str) -> TaskSpec:
    """The spec of an artifact name (`mnist3`, `mnist3-paper`)."""
    base, _, subsets = task.partition("-")
    if base not in TASKS or subsets not in ("", *SUBSETS[1:]):
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(TASKS)} (with --subsets {'|'.join(SUBSETS)})")
    return dataclasses.replace(TASKS[base], name=task, subsets=subsets) if subsets else TASKS[base]


def task_argv(task: str) -> list[str]:
    return get_task(task).argv


# ----------------------------------------------------------------------------- raw splits


@cache
def _torchvision():
    """torchvision's dataset classes, imported on first use: importing torchvision pulls in torch._dynamo (seconds
    on these machines), which a `--help`, a one-line error or a step that reads no images should not pay."""
    from torchvision.datasets import CIFAR10, MNIST

    class UnverifiedCIFAR10(CIFAR10):
        """torchvision's CIFAR10 minus the md5 check, for a local copy whose bytes differ from the release."""

        def _check_integrity(self) -> bool:
            return _cifar_files_present(Path(self.root))

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return SimpleNamespace(CIFAR10=CIFAR10, UnverifiedCIFAR10=UnverifiedCIFAR10, MNIST=MNIST)


def _cifar_files_present(root: Path) -> bool:
    cifar = _torchvision().CIFAR10
    folder = Path(root) / cifar.base_folder
    names = [name for name, _ in cifar.train_list + cifar.test_list] + [cifar.meta["filename"]]
    return all((folder / name).is_file() for name in names)


def _download(cls, name: str, root: Path, train: bool, looked_for: Path, fix: str):
    """The split, downloaded by torchvision; a one-line "not found" error when that fails too."""
    try:
        return cls(str(root), train=train, download=True)
    except Exception as exc:  # no network, mirror down, disk full: all mean "not available"
        raise UserError(f"{name} not found: looked for {looked_for} and the download failed "
                        f"({type(exc).__name__}). {fix}") from None  # fmt: skip


_MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip


def _mnist_files_present(root: Path) -> bool:
    folder = Path(root) / "MNIST" / "raw"
    return all((folder / name).is_file() for names in _MNIST_FILES.values() for name in names)


def _unreadable(what: str, folder: Path, exc: Exception, fix: str) -> UserError:
    """The dataset's files are there, but one of them cannot be parsed: name it, not "not found"."""
    where = getattr(exc, "filename", None) or str(exc) or type(exc).__name__
    return UserError(f"{what} files in {folder} are there but cannot be read ({type(exc).__name__}: {where}), "
                     f"so a file is truncated or corrupt; {fix}, or pass --data_root / BAYESTDA_DATA_ROOT")  # fmt: skip


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format: a 0x08 type byte, the rank, big-endian int32 sizes, data).
    Read here rather than through torchvision so that a step on a local copy never imports torchvision;
    test_data checks it against torchvision's reader."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path.name} is not an IDX file of unsigned bytes")
    rank = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">i4", rank, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape).copy()


def _load_mnist(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(root) / "MNIST" / "raw"
    if not _mnist_files_present(root):
        fix = "Pass --data_root or set BAYESTDA_DATA_ROOT to a folder holding MNIST/raw (offline here: ../shared/datasets)"
        ds = _download(_torchvision().MNIST, "MNIST", root, train, folder, fix)
        return ds.data.numpy(), ds.targets.numpy()
    fix = "replace them with a good copy (offline here: ../shared/datasets/MNIST/raw)"
    arrays = []
    for name in _MNIST_FILES[train]:
        try:
            arrays.append(_read_idx(folder / name))
        except Exception as exc:
            exc.filename = name
            raise _unreadable("MNIST", folder, exc, fix) from None
    images, labels = arrays
    if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise _unreadable("MNIST", folder, ValueError(f"images {images.shape}, labels {labels.shape}"), fix)
    return images, labels.astype(np.int64)


@cache
def _warn_unverified_cifar(folder: str) -> None:
    msg = (
        f"CIFAR-10 at {folder} does not match torchvision's md5 sums; loading it UNVERIFIED. "
        "If it is the offline copy built by build_cifar10.py, images outside the first 761 of each batch "
        "are JPEG-degraded (the committed subsets use only the exact ones)."
    )
    print(f"warning: {msg}", file=sys.stderr)


_UNVERIFIED_CIFAR: set[Path] = set()  # data roots whose CIFAR-10 failed the md5 check (the offline copy)


def _load_cifar10(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    tv = _torchvision()
    if not _cifar_files_present(root):
        fix = f"Offline, build a copy with `python ../shared/datasets/build_cifar10.py {root}` or pass --data_root / BAYESTDA_DATA_ROOT"
        ds = _download(tv.CIFAR10, "CIFAR-10", root, train, root / tv.CIFAR10.base_folder, fix)
        return np.asarray(ds.data), np.asarray(ds.targets)
    folder = Path(root) / tv.CIFAR10.base_folder
    try:
        try:
            ds = tv.CIFAR10(str(root), train=train, download=False)
        except RuntimeError:  # the md5 check failed: the offline copy, or corrupt files
            _warn_unverified_cifar(str(folder))
            _UNVERIFIED_CIFAR.add(Path(root).resolve())
            ds = tv.UnverifiedCIFAR10(str(root), train=train, download=False)
    except Exception as exc:
        files = tv.CIFAR10.train_list if train else tv.CIFAR10.test_list
        names = [n for n, _ in files] + [tv.CIFAR10.meta["filename"]]
        exc.filename = next((n for n in names if not _unpickles(folder / n)), None)
        fix = f"rebuild them with `python ../shared/datasets/build_cifar10.py {root}` (offline) or delete them to download"
        raise _unreadable("CIFAR-10", folder, exc, fix) from None
    return np.asarray(ds.data), np.asarray(ds.targets)


def _unpickles(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            pickle.load(f, encoding="latin1")
        return True
    except Exception:
        return False


@lru_cache(maxsize=4)
def load_split(task: str, train: bool, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (MNIST: N×28×28, CIFAR-10: N×32×32×3) and labels of a whole torchvision split."""
    spec = get_task(task)
    loader = _load_mnist if spec.dataset == "mnist" else _load_cifar10
    return loader(Path(data_root), train)


def preprocess(task: str, images: np.ndarray, pixels: bool = False) -> torch.Tensor:
    """The paper's CNN transforms, applied to a batch: equal bit for bit to torchvision's ToTensor (+ Normalize).

    `pixels=True` stops at ToTensor ([0, 1] pixels), for models that normalise inputs themselves (the ViT).
    """
    x = torch.from_numpy(np.ascontiguousarray(images))
    if get_task(task).dataset == "mnist":
        return x.unsqueeze(1).float().div(255)
    x = x.permute(0, 3, 1, 2).float().div(255)
    return x if pixels else x.sub(0.5).div(0.5)


# ----------------------------------------------------------------------------- subsets


def cifar_exact(idx: np.ndarray) -> np.ndarray:
    """Which CIFAR-10 indices (of either split) have exact pixels in the offline copy."""
    return idx % CIFAR_BATCH_SIZE < CIFAR_EXACT_PER_BATCH


def candidate_pool(task: str, train: bool, n_images: int) -> np.ndarray:
    """Indices a subset may be drawn from: all of them, or for CIFAR-10 the exactly-reproduced images."""
    idx = np.arange(n_images)
    if get_task(task).dataset == "cifar10":
        idx = idx[cifar_exact(idx)]
    return idx


def draw_class_orders(task: str, labels: np.ndarray, train: bool, per_class: int, seed: int = SUBSET_RNG_SEED):
    """For each class, a random order of `per_class` candidate indices; prefixes of it nest by construction."""
    spec = get_task(task)
    rng = np.random.default_rng([seed, int(train)])
    pool = candidate_pool(task, train, len(labels))
    orders = {}
    for c in spec.classes:
        members = pool[labels[pool] == c]
        if len(members) < per_class:
            raise UserError(f"{task}: class {c} has only {len(members)} candidate images, {per_class} requested")
        orders[c] = rng.permutation(members)[:per_class]
    return orders


def nested_train_subsets(task: str, labels: np.ndarray, sizes=SUBSET_SIZES, seed: int = SUBSET_RNG_SEED):
    """{n: sorted indices with n per class}; each smaller subset lies inside every larger one."""
    orders = draw_class_orders(task, labels, train=True, per_class=max(sizes), seed=seed)
    return {n: np.sort(np.concatenate([o[:n] for o in orders.values()])) for n in sizes}


def test_subset(task: str, labels: np.ndarray, seed: int = SUBSET_RNG_SEED) -> np.ndarray:
    spec = get_task(task)
    orders = draw_class_orders(task, labels, train=False, per_class=spec.test_per_class, seed=seed)
    return np.sort(np.concatenate(list(orders.values())))


def format_indices(indices: np.ndarray) -> str:
    return "".join(f"{int(i)}\n" for i in indices)


def read_indices(path: Path) -> np.ndarray:
    return np.array([int(line) for line in Path(path).read_text().split()], dtype=np.int64)


def _sizes_in(folder: Path) -> list[int]:
    """The n of every train_subset_<n>pc.txt in a folder."""
    return sorted(
        int(p.stem.removeprefix("train_subset_").removesuffix("pc")) for p in folder.glob("train_subset_*pc.txt")
    )


def available_sizes(out_root: Path, task: str) -> list[int]:
    return sorted({n for root in {out_root, REPO_ROOT} for n in _sizes_in(root / "data" / task)})


def paper_subsets_dir() -> Path:
    """The folder holding the original code's index files: $BAYESTDA_PAPER_SUBSETS (`--paper_subsets_dir`)."""
    folder = os.environ.get(PAPER_SUBSETS_ENV)
    if not folder:
        raise UserError(f"--subsets paper reads the original code's index files: pass --paper_subsets_dir DIR "
                        f"(or set ${PAPER_SUBSETS_ENV}), DIR being the data/ folder of a clone of {PAPER_REPO}, "
                        "which holds mnist3/ and cifar10/")  # fmt: skip
    return Path(folder)


def _subset_file_name(split: str, num_per_class: int | None) -> str:
    return f"train_subset_{num_per_class}pc.txt" if split == "train" else "test_subset.txt"


def paper_subset_file(task: str, split: str, num_per_class: int | None) -> Path:
    """The original's index file of a task's train subset (n per class) or test subset; a one-line error if absent."""
    root, base = paper_subsets_dir(), get_task(task).task
    path = root / base / _subset_file_name(split, num_per_class)
    if path.is_file():
        return path
    where = f"the data/ folder of a clone of {PAPER_REPO} (it holds mnist3/ and cifar10/)"
    if not (root / base).is_dir():
        raise UserError(
            f"--paper_subsets_dir {root} has no {base}/ folder: point it (or ${PAPER_SUBSETS_ENV}) at {where}"
        )
    have = ", ".join(map(str, _sizes_in(root / base))) or "none"
    raise UserError(f"the original code has no {path.name} for {base} in {root / base} (train sizes there: {have}); "
                    "pick one of those --num_per_class, or use --subsets nested")  # fmt: skip


def subset_indices(task: str, split: str, num_per_class: int | None, out_root: Path) -> np.ndarray:
    """The indices of a task's train subset (n per class) or test subset, from its index file."""
    if get_task(task).subsets == "paper":
        return read_indices(paper_subset_file(task, split, num_per_class))
    name = _subset_file_name(split, num_per_class)
    path = find_subset_file(out_root, name, task)
    if path is None:
        have = ", ".join(map(str, available_sizes(out_root, task))) or "none"
        what = f"training subset with {num_per_class} per class" if split == "train" else "test subset"
        raise UserError(
            f"no {what} for {task} (looked for data/{task}/{name}; train sizes present: {have}). "
            f"Create it with: python make_subsets.py --task {task}"
            + (f" --num_per_class {num_per_class}" if split == "train" else "")
        )
    return read_indices(path)


@dataclass(frozen=True)
class Subset:
    """Preprocessed images, labels, and their indices into the torchvision split, in file order."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> Subset:
        return Subset(self.x.to(device), self.y.to(device), self.idx)


def load_subset(
    task: str, split: str, num_per_class: int | None, data_root: Path, out_root: Path, pixels: bool = False
) -> Subset:
    """Tensors for the train subset (n per class) or the test subset of a task (`pixels`: see `preprocess`)."""
    idx = subset_indices(task, split, num_per_class, out_root)
    images, labels = load_split(task, split == "train", Path(data_root))
    if idx.max(initial=-1) >= len(labels):
        raise UserError(f"{task} {split} subset has index {idx.max()} but the split has {len(labels)} images")
    labels = labels[idx].astype(np.int64)
    spec = get_task(task)
    if bad := sorted(set(labels.tolist()) - set(spec.classes)):
        raise UserError(
            f"the {task} {split} subset holds images of classes {bad}, which are not the task's {spec.classes}"
        )
    if spec.subsets == "paper":
        _describe_paper_subset(spec, split, num_per_class, idx, labels, Path(data_root))
    return Subset(preprocess(task, images[idx], pixels), torch.from_numpy(labels), torch.from_numpy(idx))


def _describe_paper_subset(spec: TaskSpec, split: str, num_per_class, idx, labels, data_root: Path) -> None:
    """Warn (once per process) where the paper's subset is unbalanced, or JPEG-approximate in the offline CIFAR-10."""
    what = f"the paper's {spec.task} {f'{num_per_class}pc train' if split == 'train' else 'test'} subset"
    counts = _class_counts(spec, labels)
    if counts.min() != counts.max():
        per_class = " ".join(f"{c}:{k}" for c, k in zip(spec.classes, counts, strict=True))
        _warn_once(f"{what} is unbalanced, as in the original code (class: count {per_class})")
    if spec.dataset == "cifar10" and data_root.resolve() in _UNVERIFIED_CIFAR:
        approx = int((~cifar_exact(idx)).sum())
        _warn_once(f"{approx} of the {len(idx)} images of {what} are JPEG-approximate in this unverified CIFAR-10 "
                   f"copy (exact pixels only for the first {CIFAR_EXACT_PER_BATCH} of each batch)")  # fmt: skip


def _class_counts(spec: TaskSpec, labels: np.ndarray) -> np.ndarray:
    """Images per class of the task, in `spec.classes` order."""
    return np.bincount(labels, minlength=spec.num_outputs)[list(spec.classes)]


@cache
def _warn_once(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def write_subsets(task: str, data_root: Path, out_root: Path, sizes=SUBSET_SIZES, overwrite: bool = False) -> list[str]:
    """Step 0: draw the nested train subsets and the test subset and write their index files.

    Drawing is deterministic, so a rerun reproduces the committed files; a file that differs is
    only replaced with `overwrite`. Returns one status line per file.
    """
    _, train_labels = load_split(task, True, Path(data_root))
    _, test_labels = load_split(task, False, Path(data_root))
    files = {
        train_subset_file(out_root, task, n): idx for n, idx in nested_train_subsets(task, train_labels, sizes).items()
    }
    files[test_subset_file(out_root, task)] = test_subset(task, test_labels)
    report = []
    for path, idx in files.items():
        text = format_indices(idx)
        if path.exists() and path.read_text() == text:
            report.append(f"{path}: up to date")
            continue
        if path.exists() and not overwrite:
            raise UserError(f"{path} exists with other indices; pass --overwrite to replace it")
        atomic_write_text(text, path)
        report.append(f"{path}: written ({len(idx)} indices)")
    return report


def check_paper_subsets(task: str, data_root: Path, sizes=None) -> list[str]:
    """Step 0 on `--subsets paper`: nothing to write; load the original's files (every size there, or `sizes`)
    as the steps would, so a missing or wrong file is reported now. Returns one status line per file."""
    spec = get_task(task_name(task, "paper"))
    sizes = sizes or _sizes_in(paper_subsets_dir() / spec.task)
    report = []
    for split, n in [("train", n) for n in sizes] + [("test", None)]:
        sub = load_subset(spec.name, split, n, data_root, REPO_ROOT)
        counts = _class_counts(spec, sub.y.numpy())
        report.append(f"{paper_subset_file(spec.name, split, n)}: {len(sub)} {split} images, per class "
                      + " ".join(map(str, counts)) + " (the original's file, used in place)")  # fmt: skip
    return report
