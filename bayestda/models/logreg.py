"""A linear softmax classifier on the flattened pixels: the `logreg` model family (`--arch logreg`).

The convex control that the paper lacks. With the recipe's L2 weight decay (Adam's `weight_decay` adds
wd·θ to the gradient, i.e. (wd/2)‖θ‖² to the loss) the training objective is strongly convex, so every
seed heads for the same optimum, and influence functions with the exact Hessian are the first-order
leave-one-out there. It is trained with the CNNs' recipe and scored by the same scripts.

Its LOO retrains are stacked on a CPU too (`auto_stack`). Its IF damping defaults to the weight decay:
then (H + λI) is exactly the Hessian of the objective that training minimised (cross-entropy plus the
L2 term), which is positive definite, so CG converges, and the GGN equals the Hessian for a linear model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.tasks import get_task
from ..training.recipe import TrainConfig
from . import families


class LogReg(nn.Module):
    def __init__(self, num_inputs: int, num_outputs: int = 10):
        super().__init__()
        self.linear = nn.Linear(num_inputs, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def build(config: dict) -> LogReg:
    spec = get_task(config["task"])
    return LogReg(math.prod(spec.input_shape), spec.num_outputs)


WEIGHT_DECAY = TrainConfig.weight_decay  # the recipe's L2 coefficient

FAMILY = families.register(
    families.ModelFamily(
        name="logreg", summary="a linear softmax classifier on the pixels, the convex control",
        archs={"logreg": "logreg"}, build=build, train_script="train_cnn.py", score_folder="tda_cnn_scripts",
        if_damping={"ggn": WEIGHT_DECAY, "cg": WEIGHT_DECAY, "ekfac": WEIGHT_DECAY},
        # a step of this model is mostly Python overhead, which a stack of retrains shares (BENCHMARKS.md)
        auto_stack={"cpu": 64, "cuda": 64},
    )
)  # fmt: skip
