"""TracIn (Pruthi et al. 2020) over a seed's whole training run, which is replayed rather than stored (`runs.replay`).

Two variants (`--kind`), both with the loss gradients of Grad-Dot (all trainable parameters, eval mode, factored
per-sample gradients, `grad_similarity.py`):
- `cp`, TracInCP: τ(z_j, z) = Σ_e η_e ∇L(z_j; θ_e)·∇L(z; θ_e) over the end-of-epoch parameters θ_e of every
  epoch e = 1..E, with η_e the learning rate of epoch e's last step: a learning-rate-weighted sum of GD over
  every epoch, not only the last five.
- `ideal`: τ(z_j, z) = Σ_t (η_t / B_t) ∇ℓ_j(θ_t)·∇L(z; θ_t) over every step t whose batch held z_j, with θ_t the
  parameters before the step and B_t its batch size. Under plain SGD (the recipe's `sgd` without momentum) this
  is, to first order, how much z_j's own terms lowered L(z) over the run; Adam's per-parameter scaling and SGD's
  momentum (which carries z_j's gradient into later steps) it leaves out, as TracIn does. It needs each step's
  gradients as the model took them, so it refuses runs with dropout, augmentation or BatchNorm
  (`runs.replay.step_refusal`).

Each is one τ per seed (of the whole run, not of a posterior sample): the score file holds [1, n_train, n_test]
at the run's last epoch, and steps 3–4 have only k = 1 for it. Positive: z_j helps z.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..core.allocator import reuse_large_blocks
from ..core.errors import UserError
from ..core.options import option
from ..data.subsets import Subset
from ..models import families
from ..models.func import FunctionalModel
from ..runs.replay import replay, step_refusal
from .grad_similarity import grad_dots
from .registry import MemoryOptions, Method, register

KINDS = ("cp", "ideal")
# Free memory the replay keeps between Grad-Dot passes (`allocator.reuse_large_blocks`): every pass frees and
# reallocates the same large buffers (per-sample gradient chunks, test-gradient blocks), so keeping them spares each
# epoch's (or step's) pass the page faults of fresh memory. Bit-identical; the peak stays one pass's.
KEEP_FREED = 2**31 - 1


@dataclass(frozen=True)
class TracInOptions(MemoryOptions):
    kind: str = option("cp", "cp: TracInCP, the learning-rate-weighted Grad-Dot at the end of every epoch; ideal: "
                       "every step whose batch held z_j, at the parameters before it, weighted by lr/batch size",
                       choices=KINDS)  # fmt: skip


def _scoring_copy(model: torch.nn.Module, chunk: int, loss) -> FunctionalModel:
    """The live model of the replay, copied in eval mode: scoring must not touch the training run."""
    return FunctionalModel(copy.deepcopy(model).eval(), chunk=chunk, loss=loss)


def score(samples, opts: TracInOptions, device) -> tuple[torch.Tensor, list[dict]]:
    """[1, n_train, n_test] TracIn of one seed's run, and the replay's diagnostics."""
    config = samples.configs[-1]
    if opts.kind == "ideal" and (why := step_refusal(config)):
        raise UserError(f"tracin-ideal needs each step's gradients as the model took them, but {why}; use tracin-cp "
                        "(--kind cp)")  # fmt: skip
    loss = families.loss(config)
    train, test = samples.train.to(device), samples.test.to(device)
    total = torch.zeros(len(train), len(test), dtype=torch.float64, device=device)
    lrs = []

    def at_epoch_end(epoch, model, optimizer, train_loss):
        lr = optimizer.param_groups[0]["lr"]
        lrs.append(lr)
        total.add_(grad_dots(_scoring_copy(model, opts.chunk, loss), train, test).double(), alpha=lr)

    def before_step(epoch, positions, model, optimizer):
        lr = optimizer.param_groups[0]["lr"]
        batch = Subset(train.x[positions], train.y[positions], train.idx[positions.cpu()])
        dots = grad_dots(_scoring_copy(model, opts.chunk, loss), batch, test)
        total.index_add_(0, positions, dots.double(), alpha=lr / len(positions))

    bar = lambda it: tqdm(it, desc=f"tracin-{opts.kind} seed {samples.seed}", unit="epoch", leave=False)  # noqa: E731
    with reuse_large_blocks(KEEP_FREED):
        if opts.kind == "cp":
            diagnostics = replay(samples, device, on_epoch_end=at_epoch_end, progress=bar)
            diagnostics["epoch_lrs"] = lrs
        else:
            diagnostics = replay(samples, device, before_step=before_step, progress=bar)
    return total.float().cpu()[None], [diagnostics]


TRACIN = register(Method(name="tracin", label="TracIn", helps_sign=+1, options=TracInOptions, score=score,
                         per_seed=True, variant="kind", one_per_seed=True))  # fmt: skip
