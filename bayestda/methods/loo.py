"""Leave-one-out: τ = L(z; θ without z_j) − L(z; θ), by retraining with the one training loop.

Three protocols, each a different retraining:
- `paper` (the original code): from each checkpoint, continue training with a fresh optimizer and the seed's
  batch order for the full epoch budget, with z_j's loss zeroed (it still counts in the batch-mean
  denominator). Compare with the checkpoint itself. This conflates removing z_j with E extra epochs.
- `paired`: the same continuation, compared with the same continuation on the full data, so that z_j
  is the only difference.
- `scratch`: retrain from the seed's initialisation and batch order with z_j removed from its batches,
  read off the last 5 epochs, and compare with the same retrain on the full data. This is the
  textbook LOO for a seed, and it needs one set of retrains per seed, not one per checkpoint.

Every retrain follows the seed's recipe with a fresh optimizer, through the retrain engine (`runs.retrains`: one
thread per retrain on a CPU, in `workers` processes, or `stack` retrains as one vmapped model).

`scratch` and `paired` are ground truths (`Method.ground_truth`), `scratch` first: the textbook leave-one-out of
the training procedure, and the posterior sample given D∖{z_j}. `paper` is not, and is kept to compare with the
original's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.options import option
from ..models import families
from ..runs.retrains import (
    Retrain,
    RetrainContext,
    RetrainOptions,
    resolve_stack,
    retrain_context,
    retrain_threads,
    run_retrains,
)
from ..runs.samples import SeedSamples
from ..training.loop import evaluate
from .registry import Method, register

PROTOCOLS = ("paper", "paired", "scratch")


def loo_scores(protocol: str, ctx: RetrainContext, base_losses: torch.Tensor, workers: int, stack: int = 1):
    """[n_ckpts, n_train, n_test] LOO scores of one seed, and protocol diagnostics.

    `base_losses` [n_ckpts, n_test] are the checkpoints' own test losses (the `paper` baseline).
    """
    n = len(ctx.train_data)
    if protocol == "scratch":
        jobs = [Retrain(None, zero_weight=False)] + [Retrain(j, zero_weight=False) for j in range(n)]
        results = run_retrains(ctx, jobs, workers, "LOO scratch", stack)
        full, loo = results[0], torch.stack(results[1:], 1)  # [ckpts, m], [ckpts, n, m]
        diag = {"max_abs_full_retrain_minus_checkpoint_test_loss": (full - base_losses).abs().max().item()}
        return loo - full[:, None, :], diag
    if protocol not in ("paper", "paired"):
        raise ValueError(f"unknown LOO protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    n_ckpts = len(ctx.start_states)
    jobs = [Retrain(j, start=c) for c in range(n_ckpts) for j in range(n)]
    if protocol == "paired":
        jobs += [Retrain(None, start=c) for c in range(n_ckpts)]
    results = run_retrains(ctx, jobs, workers, f"LOO {protocol}", stack)
    loo = torch.stack([r[-1] for r in results[: n_ckpts * n]]).view(n_ckpts, n, -1)
    if protocol == "paper":
        return loo - base_losses[:, None, :], {}
    full = torch.stack([r[-1] for r in results[n_ckpts * n :]])
    diag = {"mean_abs_continuation_shift_of_test_loss": (full - base_losses).abs().mean().item()}
    return loo - full[:, None, :], diag


# ----------------------------------------------------------------------------- the method


@dataclass(frozen=True)
class LOOOptions(RetrainOptions):
    protocol: str = option("paper", "which retraining defines the ground truth: paper (continue from each "
                           "checkpoint without z_j; compare with the checkpoint, as the original), paired (compare "
                           "with the same continuation on the full data), scratch (retrain from the seed's "
                           "initialisation and batch order)", choices=PROTOCOLS)  # fmt: skip


def score(samples: SeedSamples, opts: LOOOptions, device) -> tuple[torch.Tensor, list[dict]]:
    """LOO retrains one seed as a whole (`scratch`), or continues from each of its checkpoints."""
    loss_dtype = getattr(torch, opts.loss_dtype)
    stack = resolve_stack(opts.stack, samples.configs[0], device)
    ctx = retrain_context(samples, device, loss_dtype, from_checkpoints=opts.protocol != "scratch")
    loss = families.train_extras(samples.configs[0]).loss
    base = torch.stack([evaluate(m, samples.test, loss, loss_dtype)[0] for m in samples.models(device)])
    scores, diag = loo_scores(opts.protocol, ctx, base, opts.workers, stack)
    return scores, [{**diag, "stack": stack, "retrain_threads": retrain_threads(device, stack)}]


METHOD = register(
    Method(
        name="loo", label="LOO", helps_sign=+1, options=LOOOptions, score=score, per_seed=True, variant="protocol",
        loss_difference=True, retrained=True, ground_truth=("scratch", "paired"), removal=lambda n: 1.0,
    )
)  # fmt: skip
