"""Your own model and data, in one plug-in file: scikit-learn's 8×8 digits and a small MLP trained with SGD.

A plug-in declares what the package does not have, and nothing else changes: every step script and
`run_experiment.py` take `--plugin examples/digits.py`, every checkpoint records the plug-in, and later steps load
it from there. This file declares
- a task (`bayestda.data.tasks.Task`): where the images come from (`load_split`: scikit-learn's bundled
  `load_digits`, 1,797 images of 10 classes, split once into 1,297 for training and 500 for testing), how they
  become model inputs (`preprocess`), the classes, the test subset (30 per class) and the default epochs;
- a model family (`bayestda.models.families.ModelFamily`): how a run config becomes a model (`build`), and its
  default training recipe (SGD with momentum; `bayestda.training.recipe`).
The loss is the default, cross-entropy (`bayestda.training.losses`); a family would declare another one as `loss=`.

Run it (README, "Your own model and data"):

    python run_experiment.py --plugin examples/digits.py --model smallmlp --task digits --num_per_class 20 \\
        --methods gd,gc,ats,if-ggn,if-ekfac,trak,tracin-cp,ud,loo-scratch,lds
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bayestda.data.tasks import Task, get_task
from bayestda.data.tasks import register as register_task
from bayestda.models.families import ModelFamily
from bayestda.models.families import register as register_family

TEST_IMAGES = 500
SPLIT_SEED = 0  # the one fixed split of the 1,797 images into train and test


def load_split(train: bool, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The train or test split: 8×8 images with values 0..16, and labels. Bundled with scikit-learn: no data root."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.target))
    idx = order[TEST_IMAGES:] if train else order[:TEST_IMAGES]
    return digits.images[idx].astype(np.float32), digits.target[idx].astype(np.int64)


def preprocess(images: np.ndarray, pixels: bool = False) -> torch.Tensor:
    """[N, 1, 8, 8] in [0, 1]."""
    return torch.from_numpy(images).div(16).unsqueeze(1)


TASK = register_task(
    Task(
        name="digits", summary="scikit-learn's 8x8 digits (10 classes; examples/digits.py)", load_split=load_split,
        preprocess=preprocess, classes=tuple(range(10)), input_shape=(1, 8, 8), test_per_class=30, epochs=20,
    )
)  # fmt: skip


class SmallMLP(nn.Module):
    """64 → 32 → 10 with a GELU, and dropout after the hidden layer when the recipe asks for it."""

    def __init__(self, inputs: int, outputs: int, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(nn.functional.gelu(self.hidden(x.flatten(1)))))


def build(config: dict) -> SmallMLP:
    """The untrained model of a run config (its task's input and output sizes, its recipe's dropout rate); initialised
    from torch's global RNG, which the package seeds from the run's init seed."""
    task = get_task(config["task"])
    return SmallMLP(math.prod(task.input_shape), task.num_outputs, dropout=config.get("dropout", 0.0))


FAMILY = register_family(
    ModelFamily(
        name="smallmlp", summary="a 64-32-10 MLP (examples/digits.py)", archs={"smallmlp": "smallmlp"}, build=build,
        recipe={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32},
        dropout=True,
    )
)  # fmt: skip
