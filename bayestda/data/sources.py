"""Readers of the datasets the package's tasks use: MNIST and CIFAR-10, whole splits as raw uint8 arrays.

Each reads a local copy under the data root (MNIST's IDX files directly, CIFAR-10 through torchvision), or lets
torchvision download it when absent and the network allows. A missing dataset and one whose files are there but
unreadable are different one-line errors ("not found" with the download's failure, "cannot be read" naming the
file). The ToTensor / Normalize transforms of the paper, applied to a whole batch, are here too, so that a task
module only combines them.

The offline CIFAR-10 copy (../shared/datasets/build_cifar10.py) fails torchvision's md5 check: it is loaded
UNVERIFIED, with a warning, and `unverified_cifar10(root)` tells a task so (its exact images are the first 761 of
each 10,000-image batch, `CIFAR_EXACT_PER_BATCH`).
"""

from __future__ import annotations

import os
import pickle
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..core.errors import UserError

CIFAR_EXACT_PER_BATCH = 761
CIFAR_BATCH_SIZE = 10_000


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


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format: a 0x08 type byte, the rank, big-endian int32 sizes, data).
    Read here rather than through torchvision so that a step on a local copy never imports torchvision;
    test_data checks it against torchvision's reader."""
    raw = path.read_bytes()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path.name} is not an IDX file of unsigned bytes")
    rank = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">i4", rank, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape).copy()


def mnist(train: bool, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's train or test split: uint8 images N×28×28 and int64 labels."""
    folder = Path(root) / "MNIST" / "raw"
    if not _mnist_files_present(root):
        fix = "Pass --data_root or set BAYESTDA_DATA_ROOT to a folder holding MNIST/raw (offline here: ../shared/datasets)"
        ds = _download(_torchvision().MNIST, "MNIST", root, train, folder, fix)
        return ds.data.numpy(), ds.targets.numpy()
    fix = "replace them with a good copy (offline here: ../shared/datasets/MNIST/raw)"
    arrays = []
    for name in _MNIST_FILES[train]:
        try:
            arrays.append(read_idx(folder / name))
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


UNVERIFIED_CIFAR: set[Path] = set()  # data roots whose CIFAR-10 failed the md5 check (the offline copy)


def unverified_cifar10(root: Path) -> bool:
    """Whether the CIFAR-10 read from `root` failed torchvision's md5 check (the offline copy)."""
    return Path(root).resolve() in UNVERIFIED_CIFAR


def cifar10(train: bool, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's train or test split: uint8 images N×32×32×3 and int64 labels."""
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
            UNVERIFIED_CIFAR.add(Path(root).resolve())
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


def cifar_exact(idx: np.ndarray) -> np.ndarray:
    """Which CIFAR-10 indices (of either split) have exact pixels in the offline copy."""
    return idx % CIFAR_BATCH_SIZE < CIFAR_EXACT_PER_BATCH


# ----------------------------------------------------------------------------- transforms, on a whole batch


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor for a batch of uint8 images, bit for bit: N×H×W (grey) or N×H×W×C, to [N, C, H, W]
    floats in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dim() == 3:
        return x.unsqueeze(1).float().div(255)
    return x.permute(0, 3, 1, 2).float().div(255)


def normalise_half(x: torch.Tensor) -> torch.Tensor:
    """torchvision's Normalize(0.5, 0.5) on every channel: [0, 1] to [-1, 1]."""
    return x.sub(0.5).div(0.5)
