"""MNIST3: the paper's MNIST task, the digits 0, 1 and 2 of MNIST, with 10 logits as the original keeps.

Images are ToTensor'd, [1, 28, 28] in [0, 1], as the original. The test subset holds 300 images per class of the
test split; training subsets are drawn from the whole train split. The original's budget is 15 epochs. The
original code's index files exist for 10, 20 and 50 per class (`--subsets paper`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import sources
from ..data.tasks import Task, register


def preprocess(images: np.ndarray, pixels: bool = False) -> torch.Tensor:
    return sources.to_tensor(images)


TASK = register(
    Task(
        name="mnist3", summary="MNIST digits 0, 1, 2 (the paper's MNIST3)", load_split=sources.mnist,
        preprocess=preprocess, classes=(0, 1, 2), num_outputs=10, input_shape=(1, 28, 28), test_per_class=300,
        epochs=15, paper_subsets=True,
    )
)  # fmt: skip
