"""The paper's CNNs, as the `cnn` model family (`--arch cnn2|cnn3`, model names `cnn` and `cnn3`).

conv32 → gelu → pool → conv64 → gelu → pool → [conv64 → gelu] → fc128 → gelu → fc10, with 3×3 kernels on
MNIST and 5×5 on CIFAR-10. `cnn2` is the paper's 2-layer CNN (225k parameters). `cnn3` is a 3-layer
variant: it adds a 64→64 'same'-padded conv before the classifier head, which keeps the head identical and
changes the depth only. Checkpoints hold the whole state_dict; inputs are the paper's preprocessed tensors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import families
from ..data import get_task

KERNEL_SIZE = {"mnist3": 3, "cifar10": 5}


class CNN(nn.Module):
    channels_last = True  # the faster memory layout for these convolutions on CPU (training.fast_layout)

    def __init__(self, in_channels: int, kernel_size: int, num_outputs: int = 10, extra_conv: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size)
        self.conv2 = nn.Conv2d(32, 64, kernel_size)
        self.conv3 = nn.Conv2d(64, 64, kernel_size, padding=kernel_size // 2) if extra_conv else None
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.fc2 = nn.Linear(128, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.gelu(self.conv1(x)))
        x = self.pool(F.gelu(self.conv2(x)))
        if self.conv3 is not None:
            x = F.gelu(self.conv3(x))
        x = F.gelu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def build(config: dict) -> CNN:
    """A freshly initialised CNN of the config's `arch` and `task` (from torch's global RNG: seed it first)."""
    spec = get_task(config["task"])
    return CNN(spec.image_shape[0], KERNEL_SIZE[spec.name], spec.num_outputs, extra_conv=config["arch"] == "cnn3")


FAMILY = families.register(
    families.ModelFamily(
        name="cnn", summary="the paper's 2-layer CNN and a 3-layer variant", archs={"cnn2": "cnn", "cnn3": "cnn3"},
        build=build, train_script="train_cnn.py", score_folder="tda_cnn_scripts",
        # On a GPU the CNN's HVPs want wide batches (BENCHMARKS.md, "The CNN on a GPU").
        gpu_hvp_chunk=256,
    )
)  # fmt: skip
