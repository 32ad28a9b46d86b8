"""CIFAR-10, as the paper uses it: all 10 classes, ToTensor + Normalize(0.5, 0.5), 30 epochs.

The test subset holds 50 images per class. On this project's machines the dataset is an offline copy whose pixels
are exact only for the first 761 images of each 10,000-image batch (`data.sources`), so subsets are drawn from those
images only (`pool`): scores on the copy then equal scores on the official release. The batches are in random order,
so this is still a uniform random draw per class. The original code's index files (`--subsets paper`) were not drawn
that way: a warning says how many of their images are JPEG-approximate in the copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import sources
from ..data.tasks import Task, register


def preprocess(images: np.ndarray, pixels: bool = False) -> torch.Tensor:
    """`pixels`: [0, 1] RGB without the paper's normalisation, for models that normalise themselves (the ViT)."""
    x = sources.to_tensor(images)
    return x if pixels else sources.normalise_half(x)


def exact_pool(train: bool, n_images: int) -> np.ndarray:
    idx = np.arange(n_images)
    return idx[sources.cifar_exact(idx)]


def describe_paper_subset(what: str, idx: np.ndarray, data_root: Path) -> list[str]:
    if not sources.unverified_cifar10(data_root):
        return []
    approx = int((~sources.cifar_exact(idx)).sum())
    return [f"{approx} of the {len(idx)} images of {what} are JPEG-approximate in this unverified CIFAR-10 copy "
            f"(exact pixels only for the first {sources.CIFAR_EXACT_PER_BATCH} of each batch)"]  # fmt: skip


TASK = register(
    Task(
        name="cifar10", summary="CIFAR-10, all 10 classes", load_split=sources.cifar10, preprocess=preprocess,
        classes=tuple(range(10)), input_shape=(3, 32, 32), test_per_class=50, epochs=30, pool=exact_pool,
        paper_subsets=True, describe_paper_subset=describe_paper_subset,
    )
)  # fmt: skip
