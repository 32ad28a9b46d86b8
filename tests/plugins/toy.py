"""A plug-in that exists only in the tests: a synthetic task and two small model families, declared the way a user's
plug-in declares them (examples/digits.py), to run through the package's steps from outside it.

- task `toy`: three Gaussian blobs in 8 dimensions (120 training and 60 test points), 10 test points per class;
- family `toymlp`: 8 → 6 → 3 with a GELU and optional dropout, trained with SGD and momentum by default;
- family `toybn`: the same with a BatchNorm1d after the hidden layer (running statistics in training);
- method `toysim`: the dot product of the two points' logits, scored by the generic step-2 script.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bayestda.data.tasks import Task, get_task
from bayestda.data.tasks import register as register_task
from bayestda.methods.registry import MemoryOptions, Method
from bayestda.methods.registry import register as register_method
from bayestda.models.families import ModelFamily
from bayestda.models.families import register as register_family

CLASSES, DIM = 3, 8


def load_split(train: bool, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A fixed draw: class c's points around 2·e_c, unit noise."""
    rng = np.random.default_rng(1 if train else 2)
    per_class = 40 if train else 20
    labels = np.repeat(np.arange(CLASSES), per_class)
    points = rng.normal(size=(len(labels), DIM)).astype(np.float32)
    points[np.arange(len(labels)), labels] += 2.0
    order = rng.permutation(len(labels))
    return points[order], labels[order].astype(np.int64)


TASK = register_task(
    Task(
        name="toy", summary="three Gaussian blobs (tests/plugins/toy.py)", load_split=load_split,
        preprocess=lambda points, pixels=False: torch.from_numpy(points), classes=tuple(range(CLASSES)),
        input_shape=(DIM,), test_per_class=10, epochs=4,
    )
)  # fmt: skip


class ToyMLP(nn.Module):
    def __init__(self, inputs: int, outputs: int, dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        self.hidden = nn.Linear(inputs, 6)
        self.norm = nn.BatchNorm1d(6) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.out = nn.Linear(6, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(nn.functional.gelu(self.norm(self.hidden(x)))))


def builder(batch_norm: bool):
    def build(config: dict) -> ToyMLP:
        task = get_task(config["task"])
        return ToyMLP(task.input_shape[0], task.num_outputs, config.get("dropout", 0.0), batch_norm)

    return build


SGD = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 8}
MLP = register_family(ModelFamily(name="toymlp", summary="an 8-6-3 MLP (tests/plugins/toy.py)", archs={"toymlp": "toymlp"},
                                  build=builder(False), recipe=SGD, dropout=True))  # fmt: skip
BN = register_family(ModelFamily(name="toybn", summary="an 8-6-3 MLP with BatchNorm (tests/plugins/toy.py)",
                                 archs={"toybn": "toybn"}, build=builder(True)))  # fmt: skip


def logit_dot(fm, train, test, opts, run_config):
    """τ = f(x_j)·f(x): a method as a plug-in declares it, scored on every checkpoint."""
    with torch.no_grad():
        return fm.logits(fm.params, train.x) @ fm.logits(fm.params, test.x).T, {}


METHOD = register_method(Method(name="toysim", label="ToySim", helps_sign=+1, options=MemoryOptions, score=logit_dot))
