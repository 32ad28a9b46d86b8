"""The paper's CNNs, as the `cnn` model family (`--arch cnn2|cnn3`, model names `cnn` and `cnn3`).

Both are the original code's networks, layer for layer: every conv is followed by GELU and a 2×2
max-pool, then a GELU hidden layer and the task's logits. The original has one net for grey images (MNIST)
and one for colour images (CIFAR-10); a task's input channels pick it (1: BW, else RGB).

| arch | input | original | convs (out channels, kernel, padding) | head | parameters (mnist3, cifar10) |
|---|---|---|---|---|---|
| cnn2 | grey | NetBW | 32 k3, 64 k3 | 1600 → 128 → 10 | 225,034 |
| cnn2 | colour | NetRGB | 32 k5, 64 k5 | 1600 → 128 → 10 | 259,914 |
| cnn3 | grey | NetBWThree | 32 k3, 64 k3 p2, 128 k3 p2 | 2048 → 256 → 10 | 619,786 |
| cnn3 | colour | NetRGBThree | 32 k3, 64 k3, 128 k3 p2 | 2048 → 256 → 10 | 620,362 |

A cnn3 run records its original's class name (`config["net"]`). Runs of an earlier, different `cnn3`
(a 64→64 'same' conv added to the 2-layer net) lack it and are refused (`refuse`). Checkpoints hold the
whole state_dict; inputs are the paper's preprocessed tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..data.tasks import get_task
from . import families


@dataclass(frozen=True)
class Net:
    name: str  # the original code's class
    convs: tuple[tuple[int, int, int], ...]  # (out channels, kernel, padding) per conv
    hidden: int


NETS = {  # (arch, grey input) -> Net
    ("cnn2", True): Net("NetBW", ((32, 3, 0), (64, 3, 0)), 128),
    ("cnn2", False): Net("NetRGB", ((32, 5, 0), (64, 5, 0)), 128),
    ("cnn3", True): Net("NetBWThree", ((32, 3, 0), (64, 3, 2), (128, 3, 2)), 256),
    ("cnn3", False): Net("NetRGBThree", ((32, 3, 0), (64, 3, 0), (128, 3, 2)), 256),
}


class CNN(nn.Module):
    channels_last = True  # the faster memory layout for these convolutions on CPU (training.fast_layout)

    def __init__(self, net: Net, image_shape: tuple[int, int, int], num_outputs: int = 10):
        super().__init__()
        channels, side, _ = image_shape
        self.num_convs = len(net.convs)
        for i, (out, kernel, padding) in enumerate(net.convs, start=1):  # conv1, conv2, ...: the original's names
            setattr(self, f"conv{i}", nn.Conv2d(channels, out, kernel, padding=padding))
            channels, side = out, (side + 2 * padding - kernel + 1) // 2
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(channels * side * side, net.hidden)
        self.fc2 = nn.Linear(net.hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_convs + 1):
            x = self.pool(F.gelu(getattr(self, f"conv{i}")(x)))
        x = F.gelu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def net_of(config: dict) -> Net:
    return NETS[config["arch"], get_task(config["task"]).input_shape[0] == 1]


def build(config: dict) -> CNN:
    """A freshly initialised CNN of the config's `arch` and `task` (from torch's global RNG: seed it first)."""
    spec = get_task(config["task"])
    return CNN(net_of(config), spec.input_shape, spec.num_outputs)


def run_config(spec) -> dict:
    """A cnn3 run names its original class, which tells it from runs of the earlier cnn3 (see `refuse`)."""
    return {"net": net_of({"arch": spec.arch, "task": spec.task}).name} if spec.arch == "cnn3" else {}


def refuse(config: dict) -> str | None:
    if config.get("arch") == "cnn3" and "net" not in config:
        return ("it was made with the earlier cnn3 (our own 64→64 'same'-conv variant); cnn3 is now the paper's "
                f"{net_of(config).name}, so retrain")  # fmt: skip
    return None


FAMILY = families.register(
    families.ModelFamily(
        name="cnn", summary="the paper's 2-layer and 3-layer CNNs", archs={"cnn2": "cnn", "cnn3": "cnn3"},
        build=build, train_script="train_cnn.py", score_folder="tda_cnn_scripts", run_config=run_config,
        refuse=refuse,
        # On a GPU the CNN's HVPs want wide batches (BENCHMARKS.md, "The CNN on a GPU").
        gpu_hvp_chunk=256,
    )
)  # fmt: skip
