"""ATS (approximate training step): τ = L(z; θ'_j) − L(z; θ), θ'_j = one step on z_j alone of a fresh optimizer of
the run's recipe (`training.recipe`: its optimizer, lr and weight decay).

A fresh optimizer's first step has a closed form, with ĝ = ∇L(z_j) + wd·θ (torch's L2 weight decay):
- Adam (the paper's): m = (1−β1)ĝ and v = (1−β2)ĝ², so θ' = θ − lr/(1−β1) · m / (√v/√(1−β2) + ε);
- SGD: its momentum buffer starts at ĝ, so θ' = θ − lr·ĝ, or θ − lr·(1 + μ)·ĝ with Nesterov momentum μ.
It is computed for all training samples at once from their per-sample gradients, op for op as torch's optimizer
does it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.subsets import Subset
from ..models.func import FunctionalModel, flatten
from ..runs.retrains import loss_dtype_option
from ..training.loop import fast_layout, per_sample_losses
from ..training.recipe import TrainConfig
from .registry import MemoryOptions, Method, register


def fresh_adam_step(theta: torch.Tensor, grads: torch.Tensor, lr: float, weight_decay: float,
                    betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:  # fmt: skip
    """Parameters after one step of a new torch.optim.Adam, for every row of `grads` [n, P]."""
    beta1, beta2 = betas
    g = grads.add(theta, alpha=weight_decay) if weight_decay else grads
    exp_avg = torch.zeros_like(g).lerp_(g, 1 - beta1)
    exp_avg_sq = torch.zeros_like(g).addcmul_(g, g, value=1 - beta2)
    step_size = lr / (1 - beta1**1)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**1) ** 0.5).add_(eps)
    return torch.addcdiv(theta.expand_as(g), exp_avg, denom, value=-step_size)


def fresh_sgd_step(theta: torch.Tensor, grads: torch.Tensor, lr: float, weight_decay: float, momentum: float = 0.0,
                   nesterov: bool = False) -> torch.Tensor:  # fmt: skip
    """Parameters after one step of a new torch.optim.SGD (no dampening), for every row of `grads` [n, P]."""
    g = grads.add(theta, alpha=weight_decay) if weight_decay else grads
    if momentum and nesterov:  # the buffer starts at g: the step is g + μ·g
        g = g.add(g, alpha=momentum)
    return theta.add(g, alpha=-lr)


def fresh_step(theta: torch.Tensor, grads: torch.Tensor, recipe: TrainConfig) -> torch.Tensor:
    """One step of a fresh optimizer of the recipe, for every row of `grads` [n, P]."""
    if recipe.optimizer == "sgd":
        return fresh_sgd_step(theta, grads, recipe.lr, recipe.weight_decay, recipe.momentum, recipe.nesterov)
    return fresh_adam_step(theta, grads, recipe.lr, recipe.weight_decay)


def ats_scores(
    fm: FunctionalModel, train: Subset, test: Subset, recipe: TrainConfig, chunk: int | None = None,
    loss_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # fmt: skip
    """[n_train, n_test] change in each test loss after one fresh step of the recipe's optimizer on each training
    sample.

    Each θ'_j is written in place into a scratch copy of the model (in the fast layout of
    `training.loop.per_sample_losses`), and the unperturbed losses go through the same copy, so both
    terms of τ use the same kernels. `loss_dtype`: see `training.loop.per_sample_losses`.
    """
    work = copy.deepcopy(fm.model).eval()
    fast_layout(work, test.x)
    params = [p for p in work.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]

    @torch.no_grad()
    def test_losses(flat: torch.Tensor) -> torch.Tensor:
        for p, value in zip(params, flat.split(sizes), strict=True):
            p.copy_(value.view_as(p))  # copy_ keeps the parameter's memory format
        return per_sample_losses(work, test.x, test.y, fm.loss_fn, loss_dtype=loss_dtype)[0]

    chunk = chunk or fm.chunk
    theta = flatten(fm.params)
    base = test_losses(theta)
    rows = []
    for lo in tqdm(range(0, len(train), chunk), desc="ATS", unit="chunk", leave=False):
        grads = fm.per_sample_grads(train.x[lo : lo + chunk], train.y[lo : lo + chunk])
        rows += [test_losses(row) - base for row in fresh_step(theta, grads, recipe)]
    return torch.stack(rows)


@dataclass(frozen=True)
class ATSOptions(MemoryOptions):
    loss_dtype: str = loss_dtype_option()


def score(fm: FunctionalModel, train: Subset, test: Subset, opts: ATSOptions, run_config: dict):
    """The step is the run's recipe's (optimizer, lr, weight decay)."""
    loss_dtype = getattr(torch, opts.loss_dtype)
    return ats_scores(fm, train, test, TrainConfig.from_config(run_config), loss_dtype=loss_dtype), {}


METHOD = register(
    Method(
        name="ats", label="ATS", helps_sign=-1, options=ATSOptions, score=score, loss_difference=True,
        removal=lambda n: -1.0,  # a step towards z_j, reversed: its sign, not its scale, is a removal's
    )
)  # fmt: skip
