"""Replaying a seed's training run: the same initialisation, batch order, recipe (a fresh optimizer of it) and
training extras through the one training loop (`training.loop.train`), checked against the checkpoints the run
stored.

Methods that need more than the last checkpoints (TracIn over every epoch or step, UD) replay the run instead of
storing it. Those that differentiate or re-evaluate single steps (UD, TracIn-ideal) need each step to be a function
of the weights and the batch alone: a run with dropout or augmentation, or with BatchNorm (whose training steps
normalise by the batch's own statistics), is refused in one line (`step_refusal`). On a CPU with the thread count of training the replay is bit-identical to the run; another thread
count or device sums floats in another order, so the weights drift by rounding. A replay whose weights differ
from a stored checkpoint by more than `TOLERANCE` (relative, per tensor) does not retrace the run that was
scored (other data, code or recipe) and is refused.
"""

from __future__ import annotations

import torch

from ..artifacts.checkpoints import retrain_command
from ..core.errors import UserError
from ..models import families
from ..training.loop import EpochHook, StepHook, batch_orders, train
from ..training.recipe import TrainConfig, make_optimizer
from .samples import SeedSamples

TOLERANCE = 1e-3


def step_refusal(config: dict) -> str | None:
    """Why a method that differentiates or re-evaluates single training steps cannot follow this run, or None."""
    model = config.get("model") or families.of_config(config).name
    if families.train_extras(config).random:
        return (f"the {model} run trains with dropout or random augmentation, whose random numbers a step's replay "
                "does not reproduce")  # fmt: skip
    if stats := families.running_statistics(config):
        return f"the {model} model's {stats} normalise each training step by its batch's own statistics"
    return None


def relative_difference(state: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> float:
    """max over tensors of ‖replayed − stored‖ / ‖stored‖ (0 for bit-equal weights)."""
    worst = 0.0
    for name, ref in stored.items():
        ref = ref.double()
        diff = (state[name].detach().cpu().double() - ref).norm().item()
        worst = max(worst, diff / max(ref.norm().item(), torch.finfo(torch.float64).tiny))
    return worst


def replay(
    samples: SeedSamples,
    device,
    on_epoch_end: EpochHook | None = None,
    before_step: StepHook | None = None,
    progress=None,
) -> dict:
    """Retrain the seed from its initialisation exactly as it was trained, calling the hooks on the way (see
    `training.loop.train`); {"max_rel_weight_diff": ...} against the stored checkpoints, or a UserError."""
    config = samples.configs[-1]
    cfg = TrainConfig.from_config(config)
    model = families.init(config).to(device)
    optimizer = make_optimizer(model, cfg)
    stored = {c["config"]["epoch"]: c["state_dict"] for c in samples.checkpoints}
    diffs = {}
    fix = retrain_command(samples.seed_dir) if samples.seed_dir else "its step-1 command, with --overwrite"

    def check_and_call(epoch, model, optimizer, train_loss):
        if epoch in stored:
            diffs[epoch] = relative_difference(families.model_state(model), stored[epoch])
            if diffs[epoch] > TOLERANCE:
                raise UserError(
                    f"seed {samples.seed}: replaying its training does not reproduce its checkpoint of "
                    f"epoch {epoch} (relative weight difference {diffs[epoch]:.2g} > {TOLERANCE:g}), so "
                    f"the data, the code or the training recipe changed since; retrain it with: {fix}"
                )
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, optimizer, train_loss)

    orders = batch_orders(len(samples.train), cfg.epochs, config["batch_seed"])
    train(model, optimizer, samples.train, orders, cfg, extras=families.train_extras(config),
          on_epoch_end=check_and_call, before_step=before_step, progress=progress)  # fmt: skip
    return {"max_rel_weight_diff": max(diffs.values()), "rel_weight_diff_by_epoch": diffs}
