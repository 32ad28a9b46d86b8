"""Unrolled differentiation (`ud`): the derivative of the trained model w.r.t. a training point's loss weight, carried
through the seed's actual optimisation run (Mlodozeniec et al. 2025, "Distributional Training Data Attribution").

Give z_j's loss term the weight 1 + ε in every batch that holds it, the batch mean's denominator unchanged (the
convention of `loo-paper` and `loo-paired`), and replay the run: the same initialisation, batch order and Adam steps
with weight decay (`replay.py`, through the one training loop). Forward-mode derivatives θ̇ = dθ/dε ride along:
before each step the training loop hands over θ_t and Adam's moments (m_t, v_t), and the tangents of every
training point are advanced through the same step,

    ġ   = H_B(θ_t) θ̇ + wd·θ̇ + [j ∈ B] ∇ℓ_j(θ_t) / |B|        (H_B the Hessian of the batch-mean loss)
    ṁ'  = β₁ ṁ + (1 − β₁) ġ,      v̇' = β₂ v̇ + (1 − β₂)·2 g ġ
    θ̇'  = θ̇ − (lr / c₁)·(ṁ' / d − m' ḋ / d²),   d = √(v'/c₂) + eps,  ḋ = v̇' / (2 √(v' c₂))

(c₁, c₂ Adam's bias corrections; ḋ = 0 where v' = 0, where v̇' is 0 too), vmapped over chunks of training points.
At each checkpoint epoch e, dL(z; θ_e)/dε = ∇L(z; θ_e)·θ̇_e for every test point, and

    τ_ud(z_j, z) = −dL(z; θ_e)/dε,

the first-order prediction of L(z; θ_e without z_j) − L(z; θ_e) (removing z_j is ε = −1), in loss units, with
LOO's sign: positive when z_j helps z. Its ground truth is therefore `loo-paired`'s convention applied from the
initialisation: the retrain that zeroes z_j's loss weight (the batch keeps its size). One score per checkpoint
epoch: [5, n_train, n_test], like LOO.

Precision: where a coordinate's gradient is near Adam's eps, the step's derivative there is ≈ lr/eps, which
amplifies float32 rounding in the tangents. `tangent_dtype=float64` takes every step's derivatives in float64 at the
run's own float32 weights and moments, cast (the run itself is unchanged).

The CNNs and `logreg`: families that augment or drop out (the ViT) are refused, their steps being random functions
of the batch that this replay does not differentiate.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad, vjp, vmap
from torch.nn import functional as F
from tqdm.auto import tqdm

from .. import families
from ..data import Subset
from ..errors import UserError
from ..func import FunctionalModel, flatten
from ..options import option
from ..replay import replay
from .influence import flat_test_gram
from .registry import MemoryOptions, Method, register


class UnrolledTangents:
    """Hooks for `training.train` (`before_step`, `on_epoch_end`) that carry dθ/dε, dm/dε and dv/dε of every
    training point through the run and score the test set at `score_epochs`: τ [n_train, n_test] per epoch."""

    def __init__(self, train: Subset, test: Subset, weight_decay: float, score_epochs, chunk: int, hvp_chunk: int,
                 dtype: torch.dtype | None = None):  # fmt: skip
        """`hvp_chunk` tangents per vmapped Hessian-vector product, `chunk` test points per vmapped gradient; `dtype`
        of the tangents and of every step's derivatives (taken at the run's own weights, cast), default the run's."""
        self.dtype = dtype
        cast = lambda d: d if dtype is None else Subset(d.x.to(dtype), d.y, d.idx)  # noqa: E731
        self.train, self.test, self.weight_decay = cast(train), cast(test), weight_decay
        self.chunk, self.hvp_chunk = chunk, hvp_chunk
        self.score_epochs = set(score_epochs)
        self.scores: dict[int, torch.Tensor] = {}
        self.theta = self.m = self.v = None  # tangents [n, P]: one row per training point's weight

    def _state(self, model, optimizer):
        # in the standard layout: the training loop's channels-last weights slow the vmapped double backward down
        dtype = self.dtype or next(model.parameters()).dtype
        params = {k: p.detach().to(dtype).contiguous() for k, p in model.named_parameters() if p.requires_grad}
        if self.theta is None:
            p = sum(t.numel() for t in params.values())
            self.theta, self.m, self.v = (next(iter(params.values())).new_zeros(len(self.train), p) for _ in range(3))
        moments = []
        for key in ("exp_avg", "exp_avg_sq"):
            parts = [optimizer.state[p].get(key) for p in model.parameters() if p.requires_grad]
            moments.append(flatten([t.to(dtype) if t is not None else torch.zeros_like(q) for t, q in
                                    zip(parts, params.values(), strict=True)]))  # fmt: skip
        step = next(optimizer.state[p].get("step", 0) for p in model.parameters() if p.requires_grad)
        return params, moments[0], moments[1], int(step)

    def before_step(self, epoch, positions, model, optimizer):
        params, m, v, step = self._state(model, optimizer)
        group = optimizer.param_groups[0]
        (beta1, beta2), eps, lr = group["betas"], group["eps"], group["lr"]
        xb, yb = self.train.x[positions], self.train.y[positions]
        batch_grad = grad(lambda p: F.cross_entropy(functional_call(model, p, (xb,)), yb))
        # H_B v as a vjp of the gradient (H_B is symmetric): its graph is built once per step and shared by every
        # tangent, which is cheaper here than a jvp through the backward pass
        grad_b, grad_vjp = vjp(lambda p: flatten(batch_grad(p)), params)
        hvp = lambda t: flatten(grad_vjp(t)[0])  # noqa: E731
        sample_grad = grad(lambda p, x, y: F.cross_entropy(functional_call(model, p, (x[None],)), y[None]))
        per_sample = flatten(vmap(sample_grad, in_dims=(None, 0, 0))(params, xb, yb), batch_dims=1)  # [B, P]
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
            g_dot = vmap(hvp)(th).add_(th, alpha=self.weight_decay)
            inside = (positions >= lo) & (positions < lo + len(th))
            g_dot.index_add_(0, positions[inside] - lo, per_sample[inside], alpha=1 / len(positions))
            mm.mul_(beta1).add_(g_dot, alpha=1 - beta1)
            vv.mul_(beta2).addcmul_(g, g_dot, value=2 * (1 - beta2))
            th.sub_((mm / denom - m_new * (vv * d_denom_per_v) / denom.square()) * (lr / c1))

    def on_epoch_end(self, epoch, model, optimizer, train_loss):
        if epoch in self.score_epochs:
            scorer = copy.deepcopy(model).eval()  # scoring must not touch the run
            fm = FunctionalModel(scorer if self.dtype is None else scorer.to(self.dtype), chunk=self.chunk)
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
    if families.train_extras(config).random:
        raise UserError(f"ud differentiates each Adam step of the run, but the {config['family']} family trains with "
                        "random augmentation or dropout, which it does not replay; use the CNNs or logreg")  # fmt: skip
    tangents = UnrolledTangents(
        samples.train.to(device),
        samples.test.to(device),
        config["weight_decay"],
        samples.epochs,
        opts.chunk,
        opts.hvp_chunk,
        getattr(torch, opts.tangent_dtype),
    )
    bar = lambda it: tqdm(it, desc=f"ud seed {samples.seed}", unit="epoch", leave=False)  # noqa: E731
    diagnostics = replay(samples, device, on_epoch_end=tangents.on_epoch_end, before_step=tangents.before_step,
                         progress=bar)  # fmt: skip
    return torch.stack([tangents.scores[e] for e in samples.epochs]).float().cpu(), [diagnostics] * len(samples.epochs)


METHOD = register(
    Method(name="ud", label="UD", helps_sign=+1, options=UDOptions, score=score, per_seed=True, removal=lambda n: 1.0)
)
