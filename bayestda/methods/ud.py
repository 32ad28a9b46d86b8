"""Unrolled differentiation (`ud`): the derivative of the trained model w.r.t. a training point's loss weight, carried
through the seed's actual optimisation run (Mlodozeniec et al. 2025, "Distributional Training Data Attribution").

Give z_j's loss term the weight 1 + ε in every batch that holds it, the batch mean's denominator unchanged (the
convention of `loo-paper` and `loo-paired`), and replay the run: the same initialisation, batch order and optimizer
steps with weight decay (`runs.replay`, through the one training loop). Forward-mode derivatives θ̇ = dθ/dε ride
along: before each step the training loop hands over θ_t and the optimizer's state, and the tangents of every
training point are advanced through the same step. The gradient's tangent is

    ġ   = H_B(θ_t) θ̇ + wd·θ̇ + [j ∈ B] ∇ℓ_j(θ_t) / |B|        (H_B the Hessian of the batch-mean loss)

and the step's, for the recipe's optimizer (`training.recipe`):
- Adam, with its moments (m_t, v_t):

    ṁ'  = β₁ ṁ + (1 − β₁) ġ,      v̇' = β₂ v̇ + (1 − β₂)·2 g ġ
    θ̇'  = θ̇ − (lr / c₁)·(ṁ' / d − m' ḋ / d²),   d = √(v'/c₂) + eps,  ḋ = v̇' / (2 √(v' c₂))

  (c₁, c₂ Adam's bias corrections; ḋ = 0 where v' = 0, where v̇' is 0 too);
- SGD with momentum μ (torch's, without dampening; the buffer b starts at the first step's gradient):

    ḃ'  = μ ḃ + ġ,      θ̇' = θ̇ − lr·ḃ',   or with Nesterov   θ̇' = θ̇ − lr·(ġ + μ ḃ')

  (plain SGD is μ = 0: θ̇' = θ̇ − lr·ġ).
Every update is vmapped over chunks of training points.
At each checkpoint epoch e, dL(z; θ_e)/dε = ∇L(z; θ_e)·θ̇_e for every test point, and

    τ_ud(z_j, z) = −dL(z; θ_e)/dε,

the first-order prediction of L(z; θ_e without z_j) − L(z; θ_e) (removing z_j is ε = −1), in loss units, with
LOO's sign: positive when z_j helps z. Its ground truth is therefore `loo-paired`'s convention applied from the
initialisation: the retrain that zeroes z_j's loss weight (the batch keeps its size). One score per checkpoint
epoch: [5, n_train, n_test], like LOO.

Precision: where a coordinate's gradient is near Adam's eps, the step's derivative there is ≈ lr/eps, which
amplifies float32 rounding in the tangents. `tangent_dtype=float64` takes every step's derivatives in float64 at the
run's own float32 weights and moments, cast (the run itself is unchanged).

A run with dropout or augmentation (the ViT), or with BatchNorm, is refused (`runs.replay.step_refusal`): its
steps are not functions of the weights and the batch alone, which this replay differentiates.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, vjp, vmap
from tqdm.auto import tqdm

from ..core.errors import UserError
from ..core.options import option
from ..data.subsets import Subset
from ..models import families
from ..models.func import FunctionalModel, flatten
from ..runs.replay import replay, step_refusal
from ..training.losses import CROSS_ENTROPY, Loss
from .influence import flat_test_gram
from .registry import MemoryOptions, Method, register


class UnrolledTangents:
    """Hooks for `training.loop.train` (`before_step`, `on_epoch_end`) that carry dθ/dε and the optimizer state's
    tangents (Adam: dm/dε, dv/dε; SGD: the momentum buffer's) of every training point through the run and score the
    test set at `score_epochs`: τ [n_train, n_test] per epoch."""

    def __init__(self, train: Subset, test: Subset, weight_decay: float, score_epochs, chunk: int, hvp_chunk: int,
                 dtype: torch.dtype | None = None, loss: Loss = CROSS_ENTROPY):  # fmt: skip
        """`hvp_chunk` tangents per vmapped Hessian-vector product, `chunk` test points per vmapped gradient; `dtype`
        of the tangents and of every step's derivatives (taken at the run's own weights, cast), default the run's;
        `loss` the run's training loss."""
        self.dtype, self.loss = dtype, loss
        cast = lambda d: d if dtype is None else Subset(d.x.to(dtype), d.y, d.idx)  # noqa: E731
        self.train, self.test, self.weight_decay = cast(train), cast(test), weight_decay
        self.chunk, self.hvp_chunk = chunk, hvp_chunk
        self.score_epochs = set(score_epochs)
        self.scores: dict[int, torch.Tensor] = {}
        self.theta = self.m = self.v = None  # tangents [n, P]: one row per training point's weight

    def _state(self, model, optimizer, keys=("exp_avg", "exp_avg_sq"), tangents: int = 3):
        """The run's weights (and the optimizer state `keys`, flat) before a step; allocates the `tangents` [n, P]
        buffers (θ̇ and the state's) on the first step."""
        # in the standard layout: the training loop's channels-last weights slow the vmapped double backward down
        dtype = self.dtype or next(model.parameters()).dtype
        params = {k: p.detach().to(dtype).contiguous() for k, p in model.named_parameters() if p.requires_grad}
        if self.theta is None:
            p = sum(t.numel() for t in params.values())
            self.theta, self.m, self.v = [next(iter(params.values())).new_zeros(len(self.train), p) if i < tangents
                                          else None for i in range(3)]  # fmt: skip
        moments = []
        for key in keys:
            parts = [optimizer.state[p].get(key) for p in model.parameters() if p.requires_grad]
            moments.append(flatten([t.to(dtype) if t is not None else torch.zeros_like(q) for t, q in
                                    zip(parts, params.values(), strict=True)]))  # fmt: skip
        step = next(optimizer.state[p].get("step", 0) for p in model.parameters() if p.requires_grad)
        return params, *moments, int(step)

    def _derivatives(self, model, params, positions):
        """The batch's loss gradient g_B, v ↦ H_B v, and the per-sample gradients [B, P] of its points."""
        xb, yb = self.train.x[positions], self.train.y[positions]
        loss = self.loss
        batch_grad = grad(lambda p: loss.mean(functional_call(model, p, (xb,)), yb))
        # H_B v as a vjp of the gradient (H_B is symmetric): its graph is built once per step and shared by every
        # tangent, which is cheaper here than a jvp through the backward pass
        grad_b, grad_vjp = vjp(lambda p: flatten(batch_grad(p)), params)
        hvp = lambda t: flatten(grad_vjp(t)[0])  # noqa: E731
        sample_grad = grad(lambda p, x, y: loss.mean(functional_call(model, p, (x[None],)), y[None]))
        per_sample = flatten(vmap(sample_grad, in_dims=(None, 0, 0))(params, xb, yb), batch_dims=1)  # [B, P]
        return grad_b, hvp, per_sample

    def _g_dot(self, hvp, per_sample, positions, lo: int, th: torch.Tensor) -> torch.Tensor:
        """ġ for the training points lo.. of the chunk `th` of θ̇."""
        g_dot = vmap(hvp)(th).add_(th, alpha=self.weight_decay)
        inside = (positions >= lo) & (positions < lo + len(th))
        return g_dot.index_add_(0, positions[inside] - lo, per_sample[inside], alpha=1 / len(positions))

    def before_step(self, epoch, positions, model, optimizer):
        if isinstance(optimizer, torch.optim.SGD):
            return self._sgd_step(positions, model, optimizer)
        if type(optimizer) is not torch.optim.Adam or optimizer.param_groups[0]["amsgrad"]:
            raise ValueError(f"ud follows Adam and SGD steps, not {type(optimizer).__name__}")
        params, m, v, step = self._state(model, optimizer)
        group = optimizer.param_groups[0]
        (beta1, beta2), eps, lr = group["betas"], group["eps"], group["lr"]
        grad_b, hvp, per_sample = self._derivatives(model, params, positions)
        # the primal step, as Adam takes it (its L2 term in the gradient)
        theta = flatten(params)
        g = grad_b.detach() + self.weight_decay * theta
        m_new = beta1 * m + (1 - beta1) * g
        v_new = beta2 * v + (1 - beta2) * g * g
        c1, c2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
        root = v_new.sqrt()
        denom = root / math.sqrt(c2) + eps
        d_denom_per_v = torch.where(root > 0, 0.5 / (root * math.sqrt(c2)), torch.zeros_like(root))  # ḋ / v̇'
        # the tangents, a chunk of training points at a time, in place
        for lo in range(0, len(self.theta), self.hvp_chunk):
            th, mm, vv = (t[lo : lo + self.hvp_chunk] for t in (self.theta, self.m, self.v))
            g_dot = self._g_dot(hvp, per_sample, positions, lo, th)
            mm.mul_(beta1).add_(g_dot, alpha=1 - beta1)
            vv.mul_(beta2).addcmul_(g, g_dot, value=2 * (1 - beta2))
            th.sub_((mm / denom - m_new * (vv * d_denom_per_v) / denom.square()) * (lr / c1))

    def _sgd_step(self, positions, model, optimizer):
        """SGD's step is linear in the gradient: θ̇ and the momentum buffer's tangent move with ġ alone."""
        group = optimizer.param_groups[0]
        if group["dampening"] or group["maximize"]:
            raise ValueError("ud follows SGD without dampening, minimising")
        momentum, nesterov, lr = group["momentum"], group["nesterov"], group["lr"]
        params = self._state(model, optimizer, keys=(), tangents=2 if momentum else 1)[0]
        _, hvp, per_sample = self._derivatives(model, params, positions)
        for lo in range(0, len(self.theta), self.hvp_chunk):
            th = self.theta[lo : lo + self.hvp_chunk]
            g_dot = self._g_dot(hvp, per_sample, positions, lo, th)
            if not momentum:
                th.sub_(g_dot, alpha=lr)
                continue
            buf = self.m[lo : lo + self.hvp_chunk]
            buf.mul_(momentum).add_(g_dot)
            th.sub_(g_dot.add_(buf, alpha=momentum) if nesterov else buf, alpha=lr)

    def on_epoch_end(self, epoch, model, optimizer, train_loss):
        if epoch in self.score_epochs:
            scorer = copy.deepcopy(model).eval()  # scoring must not touch the run
            fm = FunctionalModel(scorer if self.dtype is None else scorer.to(self.dtype), chunk=self.chunk,
                                 loss=self.loss)  # fmt: skip
            self.scores[epoch] = -flat_test_gram(fm, self.theta, self.test)


CPU_HVP_CHUNK = 4  # on a CPU, few tangents per HVP keep the batch's tangent activations in cache (BENCHMARKS.md)


@dataclass(frozen=True)
class UDOptions(MemoryOptions):
    """`tangent_dtype`; the rest is memory and speed only: `hvp_chunk` tangents per vmapped Hessian-vector product,
    `chunk` test points per vmapped gradient."""

    tangent_dtype: str = option("float32", "dtype of the tangents and of each step's derivatives, taken at the run's "
                                "own (float32) weights. Adam's step divides by sqrt(v) + eps, so where a gradient "
                                "coordinate is near eps it multiplies float32 rounding by up to lr/eps; float64 "
                                "removes that, at a few times the cost on a CPU (BENCHMARKS.md)",
                                choices=("float32", "float64"))  # fmt: skip

    hvp_chunk: int | str = option("auto", lambda: f"tangents per vmapped Hessian-vector product; auto: {CPU_HVP_CHUNK} "
                                  "on a CPU, the model family's on a GPU: " + families.defaults(
                                      lambda f: str(f.auto_hvp_chunk(on_gpu=True))), auto=True, minimum=1)  # fmt: skip

    def resolve_memory(self, family, on_gpu: bool):
        auto = family.auto_hvp_chunk(on_gpu=True) if on_gpu else CPU_HVP_CHUNK
        hvp_chunk = auto if self.hvp_chunk == "auto" else int(self.hvp_chunk)
        return dataclasses.replace(super().resolve_memory(family, on_gpu), hvp_chunk=hvp_chunk)


def score(samples, opts: UDOptions, device) -> tuple[torch.Tensor, list[dict]]:
    """[n_ckpts, n_train, n_test] τ_ud of one seed at its checkpoint epochs, and the replay's diagnostics."""
    config = samples.configs[-1]
    if why := step_refusal(config):
        raise UserError(f"ud differentiates each optimizer step of the run, but {why}; use loo-scratch, or a run "
                        "without them")  # fmt: skip
    tangents = UnrolledTangents(
        samples.train.to(device),
        samples.test.to(device),
        config["weight_decay"],
        samples.epochs,
        opts.chunk,
        opts.hvp_chunk,
        getattr(torch, opts.tangent_dtype),
        families.loss(config),
    )
    bar = lambda it: tqdm(it, desc=f"ud seed {samples.seed}", unit="epoch", leave=False)  # noqa: E731
    diagnostics = replay(samples, device, on_epoch_end=tangents.on_epoch_end, before_step=tangents.before_step,
                         progress=bar)  # fmt: skip
    return torch.stack([tangents.scores[e] for e in samples.epochs]).float().cpu(), [diagnostics] * len(samples.epochs)


METHOD = register(
    Method(name="ud", label="UD", helps_sign=+1, options=UDOptions, score=score, per_seed=True, removal=lambda n: 1.0)
)
