"""Subset index files, and the in-memory tensors every step trains and scores on.

A task (`data.tasks`) says where its images come from; here its whole splits are read once per process
(`load_split`), preprocessed by the task, and cut to the subsets an experiment uses, kept as one tensor per split
(the subsets are small, so no DataLoader).

Two choices of images (`--subsets`):
- `nested` (default): this package's index files (`make_subsets.py`; committed for the paper's tasks):
  balanced, each train subset inside the next larger one, drawn from the task's pool (`Task.pool`: on CIFAR-10 the
  exactly reproduced images only). Any size per class the split holds is drawn the same way, and `all` is the whole
  pool of the task's classes.
- `paper`: the original code's own index files, read from the folder the user names (`--paper_subsets_dir`,
  or `$BAYESTDA_PAPER_SUBSETS`: the `data/` folder of a clone of the original repository). They are used as
  the original used them: every train file indexes the train split, the test file the test split, so the
  CIFAR-10 10/30/40pc files (drawn from test labels) give unbalanced training sets; a warning gives the
  class counts, and the task adds its own (how many chosen CIFAR-10 images are JPEG-approximate in the offline copy).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch

from ..core import hints
from ..core.errors import UserError
from ..core.io import atomic_write_text
from ..core.paths import ALL, REPO_ROOT, find_subset_file, size_of_token, test_subset_file, train_subset_file
from .tasks import PAPER_REPO, PAPER_SUBSETS_ENV, Task, get_task, task_name

SUBSET_SIZES = (10, 20, 30, 40, 50, 60)  # the sizes per class make_subsets.py writes by default
SUBSET_RNG_SEED = 20231210  # fixed: the committed index files are regenerated bit for bit from it


@lru_cache(maxsize=4)
def load_split(task: str, train: bool, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The raw images and labels of a task's whole train or test split (`Task.load_split`)."""
    return get_task(task).load_split(train, Path(data_root))


def preprocess(task: str, images: np.ndarray, pixels: bool = False) -> torch.Tensor:
    """A batch of raw images as the task's model inputs (`Task.preprocess`; `pixels`: without its normalisation)."""
    return get_task(task).preprocess(images, pixels)


# ----------------------------------------------------------------------------- subsets


def draw_class_orders(task: str, labels: np.ndarray, train: bool, per_class: int | None, seed: int = SUBSET_RNG_SEED):
    """For each class, a random order of `per_class` candidate indices (None: all of them); prefixes of the one
    permutation per class nest by construction, whatever size is asked for."""
    spec = get_task(task)
    rng = np.random.default_rng([seed, int(train)])
    pool = spec.candidates(train, len(labels))
    orders = {}
    for c in spec.classes:
        members = pool[labels[pool] == c]
        if per_class is not None and len(members) < per_class:
            split = "train" if train else "test"
            raise UserError(f"{task}: class {c} has only {len(members)} candidate images in the {split} split, "
                            f"{per_class} per class requested; ask for at most {len(members)}, or {ALL}")  # fmt: skip
        orders[c] = rng.permutation(members)[:per_class]
    return orders


def nested_train_subsets(task: str, labels: np.ndarray, sizes=SUBSET_SIZES, seed: int = SUBSET_RNG_SEED):
    """{n: sorted indices with n per class (`all`: every candidate)}; each smaller subset lies inside every larger
    one."""
    counts = [n for n in sizes if n != ALL]
    orders = draw_class_orders(task, labels, True, None if ALL in sizes else max(counts), seed)
    return {n: np.sort(np.concatenate([o[: None if n == ALL else n] for o in orders.values()])) for n in sizes}


def test_subset(task: str, labels: np.ndarray, seed: int = SUBSET_RNG_SEED) -> np.ndarray:
    """The task's test subset: `test_per_class` per class, or every candidate of its classes."""
    spec = get_task(task)
    orders = draw_class_orders(task, labels, train=False, per_class=spec.test_per_class, seed=seed)
    return np.sort(np.concatenate(list(orders.values())))


def format_indices(indices: np.ndarray) -> str:
    return "".join(f"{int(i)}\n" for i in indices)


def read_indices(path: Path) -> np.ndarray:
    return np.array([int(line) for line in Path(path).read_text().split()], dtype=np.int64)


def _size_key(n: int | str) -> tuple:
    return (n == ALL, n if n != ALL else 0)


def _sizes_in(folder: Path) -> list[int | str]:
    """The n of every train_subset_<n>pc.txt in a folder (`all` last)."""
    found = (size_of_token(p.stem.removeprefix("train_subset_")) for p in folder.glob("train_subset_*pc.txt"))
    return sorted((n for n in found if n is not None), key=_size_key)


def available_sizes(out_root: Path, task: str) -> list[int | str]:
    return sorted({n for root in {out_root, REPO_ROOT} for n in _sizes_in(root / "data" / task)}, key=_size_key)


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
        size = ["--num_per_class", str(num_per_class)] if split == "train" else []
        raise UserError(f"no {what} for {task} (looked for data/{task}/{name}; train sizes present: {have}). "
                        f"Create it with: {hints.command(['make_subsets.py', '--task', task, *size], accepts=('out_root', 'data_root'))}")  # fmt: skip
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


def _describe_paper_subset(spec: Task, split: str, num_per_class, idx, labels, data_root: Path) -> None:
    """Warn (once per process) where the paper's subset is unbalanced, and what else its task says of it."""
    what = f"the paper's {spec.task} {f'{num_per_class}pc train' if split == 'train' else 'test'} subset"
    counts = _class_counts(spec, labels)
    if counts.min() != counts.max():
        per_class = " ".join(f"{c}:{k}" for c, k in zip(spec.classes, counts, strict=True))
        _warn_once(f"{what} is unbalanced, as in the original code (class: count {per_class})")
    for warning in spec.describe_paper_subset(what, idx, data_root) if spec.describe_paper_subset else []:
        _warn_once(warning)


def _class_counts(spec: Task, labels: np.ndarray) -> np.ndarray:
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
