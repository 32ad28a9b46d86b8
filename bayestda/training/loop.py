"""The one training loop, shared by training, every retrain (LOO, LDS) and every replay (UD, TracIn).

It follows a run's recipe (`recipe.TrainConfig`: optimizer, lr, weight decay, batch size, epochs), with the
model family's loss and additions (`TrainExtras`). Two independent random streams make a run: the initialisation
and the batch order. Each is derived from its own seed (`posterior.py`, `core.seeds`), so they can be varied
apart. Training-time randomness beyond the batch order (crops, dropout) is drawn from the batch seed too, per
(epoch, sample) for the crops, so a leave-one-out retrain sees exactly the crops of the full run. On CPU a run is
bit-reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..core.seeds import stream_seed
from ..data.subsets import Subset
from .losses import CROSS_ENTROPY, Loss
from .recipe import TrainConfig


def batch_orders(n_train: int, epochs: int, batch_seed: int) -> torch.Tensor:
    """[epochs, n_train] positions in the order they are visited; batches are consecutive slices."""
    gen = torch.Generator().manual_seed(stream_seed(batch_seed, "batch"))
    return torch.stack([torch.randperm(n_train, generator=gen) for _ in range(epochs)])


def fast_layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Put image batches (and the model) in channels-last layout, for models that ask for it
    (`model.channels_last`: the CNNs, where it is the faster layout on CPU).

    Only memory layout changes, not the model's function; the model is converted in place.
    """
    if x.dim() != 4 or not getattr(model, "channels_last", False):
        return x
    model.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


def batch_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    loss: Loss = CROSS_ENTROPY,
) -> torch.Tensor:
    """Mean loss of a batch (one per model for a `ModelStack`).

    With `weight`, the mean of wᵢ·lossᵢ: a zero weight removes a sample's loss but keeps it in the
    denominator, as the paper's leave-one-out does. With a 0/1 `keep` mask, the mean over the kept
    samples only: the sample is removed from its batch (a stack's way of `train(exclude=...)`).
    """
    losses = loss.per_sample(model(x), y)
    if weight is not None:
        losses = losses * weight
    if keep is not None:
        keep = keep.to(losses.dtype)
        return (losses * keep).sum(-1) / keep.sum(-1)
    return losses.mean(-1)


EpochHook = Callable[[int, nn.Module, torch.optim.Optimizer, float], None]
StepHook = Callable[[int, torch.Tensor, nn.Module, torch.optim.Optimizer], None]  # (epoch, positions, model, opt)
Augment = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (x_batch, epoch, positions) -> x_batch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainExtras:
    """What a model family adds to the shared recipe; the defaults are the CNNs' plain loop.

    - `loss`: the per-sample loss it trains (`losses.Loss`; cross-entropy, the paper's, by default).
    - `augment(x_batch, epoch, positions)` transforms each training batch (the ViT's random crops);
      it must be a function of (epoch, position) only, so that retrains reproduce it.
    - `linear_decay`: the learning rate falls linearly from lr to 0 over the run, stepped per batch
      (transformers' linear schedule without warm-up). Each retrain restarts it, as it restarts Adam.
    - `rng_seed`: seeds torch's global RNG for the run (dropout), inside a fork so callers are unaffected.
    - `precision`: autocast dtype of the training forward pass ("bf16", "fp16" with loss scaling, "fp32"):
      meant for GPUs; on CPU it runs too (slowly), which is how the tests exercise it.
    """

    loss: Loss = CROSS_ENTROPY
    augment: Augment | None = None
    linear_decay: bool = False
    rng_seed: int | None = None
    precision: str = "fp32"

    @property
    def random(self) -> bool:
        """A step is a random function of its batch (augmentation or dropout): methods that differentiate or
        re-evaluate single steps of a replay cannot follow it."""
        return self.augment is not None or self.rng_seed is not None


def _lr_factors(n_visited: int, cfg: TrainConfig) -> Callable[[int, int], float]:
    """(epoch, batch) -> lr multiplier of the linear schedule: 1 at the first step, 1/T at the last."""
    per_epoch = -(-n_visited // cfg.batch_size)
    total = per_epoch * cfg.epochs
    return lambda epoch, b: (total - ((epoch - 1) * per_epoch + b)) / total


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Subset,
    orders: torch.Tensor,
    cfg: TrainConfig,
    *,
    start_epoch: int = 0,
    sample_weight: torch.Tensor | None = None,
    exclude: int | torch.Tensor | None = None,
    extras: TrainExtras = TrainExtras(),
    on_epoch_end: EpochHook | None = None,
    before_step: StepHook | None = None,
    progress: Callable | None = None,
) -> list[float]:
    """Train for epochs start_epoch+1 .. E of `orders` [E, k], visiting `data` in the order `orders[e-1]` (positions
    in `data`; an order may visit only some of them: a retrain on a subset).

    `sample_weight` (one weight per position in `data`) reweights per-sample losses: a zero drops a
    sample's loss but keeps its slot in the batch mean (the paper's LOO). `exclude` removes position
    `exclude` from its batches altogether (a true leave-one-out). For a `ModelStack` of M models,
    `sample_weight` is [M, n] and `exclude` an [M] tensor of positions (-1: none); or `orders` is [M, epochs, k], one
    order per model (each model sees its own batches; no weights or exclusions then). `extras` holds a family's additions
    (augmentation, lr schedule, dropout seed, autocast). `on_epoch_end(epoch, model, optimizer,
    train_loss)` sees every finished epoch (1-based); `before_step(epoch, positions, model, optimizer)` sees each
    step's batch (positions in `data`) and the model before the step, with the step's learning rate set (it must
    leave the model as it found it). Returns the mean batch loss of each epoch trained.
    """
    device = next(model.parameters()).device
    x, y = fast_layout(model, data.x.to(device)), data.y.to(device)
    weight = sample_weight.to(device) if sample_weight is not None else None
    per_model = orders.dim() == 3
    if per_model and (sample_weight is not None or exclude is not None or extras.random):
        raise ValueError("per-model orders take no sample weights, exclusions, augmentation or dropout")
    net = partial(model, per_model=True) if per_model else model  # a ModelStack fed one batch per model
    lr_factor = _lr_factors(orders.shape[-1], cfg) if extras.linear_decay else None
    autocast_dtype = PRECISIONS[extras.precision]
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    epochs = range(start_epoch + 1, orders.shape[-2] + 1)
    if isinstance(exclude, torch.Tensor):
        exclude = exclude.to(device)
    train_losses = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=extras.rng_seed is not None):
        if extras.rng_seed is not None:
            torch.manual_seed(extras.rng_seed)
        for epoch in progress(epochs) if progress else epochs:
            model.train()
            running = []
            for b, batch in enumerate(orders[..., epoch - 1, :].to(device).split(cfg.batch_size, dim=-1)):
                if lr_factor is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.lr * lr_factor(epoch, b)
                keep = None
                if isinstance(exclude, int):
                    batch = batch[batch != exclude]
                    if len(batch) == 0:
                        continue
                elif exclude is not None:  # one position per stacked model
                    keep = batch[None, :] != exclude[:, None]
                    if not keep.any(1).all():
                        raise ValueError("a stacked model's batch is empty after its exclusion; train it alone")
                if before_step is not None:
                    before_step(epoch, batch, model, optimizer)
                xb = x[batch] if extras.augment is None else extras.augment(x[batch], epoch, batch)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    losses = batch_loss(
                        net, xb, y[batch], None if weight is None else weight[..., batch], keep, extras.loss
                    )
                    loss = losses.sum()  # a stack's models are independent: each gets its own loss's gradient
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                running.append(losses.detach().float().mean())
            train_losses.append(torch.stack(running).mean().item())
            if on_epoch_end is not None:
                on_epoch_end(epoch, model, optimizer, train_losses[-1])
    return train_losses


# Evaluation chunk: on CPU, 32 MNIST images keep the first conv's activations (3 MB) near the core's L2 cache, the
# fastest setting measured (BENCHMARKS.md); on a GPU, larger is better.
EVAL_CHUNK = {"cpu": 32, "cuda": 256}


@torch.no_grad()
def per_sample_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss, chunk: int | None = None,
    loss_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(per-sample loss, predicted class) in eval mode, `chunk` samples at a time (`EVAL_CHUNK`).

    `loss_dtype` (default: the logits' own) is the dtype the loss is taken in. In float32 a cross-entropy
    below ~1e-7 (a confident, correct prediction) rounds to a multiple of 1.2e-7 or to 0, since
    log(1 + ε) is computed from 1 + ε. float64 from the same float32 logits resolves it.
    """
    model.eval()
    device = next(model.parameters()).device
    chunk = chunk or getattr(model, "eval_chunk", None) or EVAL_CHUNK.get(device.type, 128)
    x = fast_layout(model, x.to(device))
    losses, preds = [], []
    for xb, yb in zip(x.split(chunk), y.to(device).split(chunk), strict=True):
        logits = model(xb)
        losses.append(loss.per_sample(logits.to(loss_dtype or logits.dtype), yb))
        preds.append(logits.argmax(-1))
    return torch.cat(losses, -1), torch.cat(preds, -1)


def evaluate(
    model: nn.Module, data: Subset, loss: Loss, loss_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, float]:
    """Per-sample test losses (on CPU; [M, n] for a `ModelStack`) and accuracy in % (a stack's: the mean), in eval
    mode."""
    losses, preds = per_sample_losses(model, data.x, data.y, loss, loss_dtype=loss_dtype)
    return losses.cpu(), 100.0 * (preds.cpu() == data.y.cpu()).sum().item() / preds.numel()
