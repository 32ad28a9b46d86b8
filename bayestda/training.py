"""The one training loop (shared by training, LOO retraining and ATS) and its seeded randomness.

Two independent random streams make a run: the initialisation and the batch order. Each is derived
from its own seed (see `posterior.py`), so they can be varied apart. On CPU a run is bit-reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import Subset
from .models import build_model


@dataclass(frozen=True)
class TrainConfig:
    """The paper's optimisation recipe: Adam (L2 weight decay), batch 32, a fixed epoch budget."""

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 5e-3
    batch_size: int = 32

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> TrainConfig:
        """The recipe recorded in a checkpoint's config."""
        return cls(**{f.name: config[f.name] for f in fields(cls)})


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream, so `init` and `batch` never share a stream."""
    state = np.random.SeedSequence([seed, *stream.encode()]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def init_model(arch: str, task: str, init_seed: int) -> nn.Module:
    """The model's initial weights, a function of `init_seed` only (torch's global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(init_seed, "init"))
        return build_model(arch, task)


def batch_orders(n_train: int, epochs: int, batch_seed: int) -> torch.Tensor:
    """[epochs, n_train] positions in the order they are visited; batches are consecutive slices."""
    gen = torch.Generator().manual_seed(stream_seed(batch_seed, "batch"))
    return torch.stack([torch.randperm(n_train, generator=gen) for _ in range(epochs)])


def fast_layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Put image batches (and the model) in channels-last layout, the faster one for these CNNs on CPU.

    Only memory layout changes, not the model's function; the model is converted in place.
    """
    if x.dim() != 4:
        return x
    model.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of a batch. With `weight`, the mean of wᵢ·lossᵢ: a zero weight removes a
    sample's loss but keeps it in the denominator, as the paper's leave-one-out does."""
    losses = F.cross_entropy(model(x), y, reduction="none")
    return losses.mean() if weight is None else (losses * weight).mean()


EpochHook = Callable[[int, nn.Module, torch.optim.Optimizer, float], None]


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Subset,
    orders: torch.Tensor,
    cfg: TrainConfig,
    *,
    start_epoch: int = 0,
    sample_weight: torch.Tensor | None = None,
    exclude: int | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: Callable | None = None,
) -> list[float]:
    """Train for epochs start_epoch+1 .. len(orders), visiting `data` in the order `orders[e-1]`.

    `sample_weight` (one weight per position in `data`) reweights per-sample losses: a zero drops a
    sample's loss but keeps its slot in the batch mean (the paper's LOO). `exclude` removes position
    `exclude` from its batches altogether (a true leave-one-out). `on_epoch_end(epoch, model, optimizer, train_loss)` sees every finished epoch
    (1-based). Returns the mean batch loss of each epoch trained.
    """
    device = next(model.parameters()).device
    x, y = fast_layout(model, data.x.to(device)), data.y.to(device)
    weight = sample_weight.to(device) if sample_weight is not None else None
    epochs = range(start_epoch + 1, len(orders) + 1)
    train_losses = []
    for epoch in progress(epochs) if progress else epochs:
        model.train()
        running = []
        for batch in orders[epoch - 1].to(device).split(cfg.batch_size):
            if exclude is not None:
                batch = batch[batch != exclude]
                if len(batch) == 0:
                    continue
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(model, x[batch], y[batch], None if weight is None else weight[batch])
            loss.backward()
            optimizer.step()
            running.append(loss.detach())
        train_losses.append(torch.stack(running).mean().item())
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, optimizer, train_losses[-1])
    return train_losses


@torch.no_grad()
def per_sample_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample cross-entropy, predicted class) in eval mode, in cache-sized chunks (faster on CPU)."""
    model.eval()
    device = next(model.parameters()).device
    x = fast_layout(model, x.to(device))
    losses, preds = [], []
    for xb, yb in zip(x.split(chunk), y.to(device).split(chunk), strict=True):
        logits = model(xb)
        losses.append(F.cross_entropy(logits, yb, reduction="none"))
        preds.append(logits.argmax(1))
    return torch.cat(losses), torch.cat(preds)


def evaluate(model: nn.Module, data: Subset) -> tuple[torch.Tensor, float]:
    """Per-sample test losses (on CPU) and accuracy in %, with the model in eval mode."""
    losses, preds = per_sample_losses(model, data.x, data.y)
    return losses.cpu(), 100.0 * (preds.cpu() == data.y.cpu()).sum().item() / len(data)
