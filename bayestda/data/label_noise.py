"""The label-noise training variant (`--label_noise 0.1`): a known share of the training labels flipped, so that
mislabel detection by self-influence (`mislabel.py`) has a ground truth.

round(rate·n) training points are chosen, and each gets a uniformly chosen other class of the task, both drawn from
`LABEL_NOISE_SEED` alone: every seed of an ensemble trains on the same noisy labels (the noise is a property of the
data, not of the training run). The flips are recorded in the run config (`label_noise`: rate, seed, the flipped
positions in the training subset and their new labels), and every later step applies them from there
(`apply_recorded`), checked against a fresh draw. A noisy model is named with the suffix `-noisy<percent>`, e.g.
`cnn-noisy10` (`posterior.model_name`).
"""

from __future__ import annotations

import torch

from ..core.errors import UserError
from ..core.seeds import stream_seed
from .subsets import Subset

LABEL_NOISE_SEED = 0


def flip_labels(y: torch.Tensor, classes: tuple[int, ...], rate: float, seed: int = LABEL_NOISE_SEED):
    """(noisy labels, flipped positions sorted): round(rate·n) positions, each moved to another of `classes`."""
    n = len(y)
    count = round(rate * n)
    if not 0 < rate < 1 or count == 0:
        raise UserError(f"--label_noise {rate} flips {count} of the {n} training labels; choose a rate in (0, 1) that "
                        f"flips at least one, e.g. 0.1")  # fmt: skip
    gen = torch.Generator().manual_seed(stream_seed(seed, "label-noise"))
    flipped = torch.randperm(n, generator=gen)[:count].sort().values
    table = torch.tensor(classes)
    position = {c: i for i, c in enumerate(classes)}
    offset = torch.randint(1, len(classes), (count,), generator=gen)  # a uniformly chosen *other* class
    noisy = y.clone()
    for p, o in zip(flipped.tolist(), offset.tolist(), strict=True):
        noisy[p] = table[(position[int(y[p])] + o) % len(classes)]
    return noisy, flipped


def config_entry(y: torch.Tensor, classes: tuple[int, ...], rate: float) -> dict:
    """The run config's record of the flips (empty for a clean run, so clean configs are unchanged)."""
    if not rate:
        return {}
    noisy, flipped = flip_labels(y, classes, rate)
    return {"label_noise": {"rate": rate, "seed": LABEL_NOISE_SEED, "flipped": flipped.tolist(),
                            "labels": noisy[flipped].tolist()}}  # fmt: skip


def apply_recorded(train: Subset, config: dict, classes: tuple[int, ...], where: str) -> Subset:
    """The training subset with the flips a run config records (unchanged for a clean run); a record that a fresh
    draw does not reproduce (other labels, code or seed) is refused."""
    record = config.get("label_noise")
    if not record:
        return train
    noisy, flipped = flip_labels(train.y, classes, record["rate"], record["seed"])
    if flipped.tolist() != record["flipped"] or noisy[flipped].tolist() != record["labels"]:
        raise UserError(f"{where} records label flips that a fresh draw does not reproduce (the training labels or "
                        "the flip code changed since); retrain it with --overwrite")  # fmt: skip
    return Subset(train.x, noisy, train.idx)
