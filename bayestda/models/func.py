"""Functional views of a model (torch.func) that every attribution method is built from.

A model is seen as its family's loss (`training.losses`) over its *trainable* parameters θ (all weights for the
CNNs; LoRA and classifier weights for the ViT), with everything else held fixed. Models are evaluated in eval mode.
Vectors over θ are flat tensors in the order of `model.named_parameters()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from ..training.losses import CROSS_ENTROPY, Loss

Params = dict[str, torch.Tensor]

# The default vmap chunks, the CNNs' on a CPU (`families.ModelFamily`; BENCHMARKS.md): samples per
# per-sample-gradient call, and vectors per Hessian-vector product.
CHUNK, HVP_CHUNK = 128, 25
# An HVP over many samples, vmapped over `width` vectors, holds HVP_SAMPLE_VECTORS·chunk (sample, vector)
# pairs at a time (`FunctionalModel.hvp_fn`): 1024 for the CNNs. The diagnostics' 8 CG probes were within it
# already; IF-cg's blocks of 25 vectors over all training samples were not (BENCHMARKS.md, peak memory).
HVP_SAMPLE_VECTORS = 8


def trainable_params(model: nn.Module) -> Params:
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def flatten(tensors: Params | list[torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(*t.shape[:batch_dims], -1) for t in values], dim=-1)


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    """The inverse of `flatten`: vec [..., P] cut into [..., *param.shape] pieces (views where possible)."""
    out, start = {}, 0
    for k, t in like.items():
        out[k] = vec[..., start : start + t.numel()].reshape(*vec.shape[:-1], *t.shape)
        start += t.numel()
    return out


class FunctionalModel:
    """Loss and its derivatives as pure functions of the trainable parameters.

    `chunk` (samples per vmapped per-sample-gradient call) and `hvp_chunk` (vectors per vmapped
    Hessian-vector product) bound memory; results do not depend on them. Every method takes its
    defaults from here, so one setting per model family (small for ViT-B) covers them all.
    """

    def __init__(self, model: nn.Module, chunk: int = CHUNK, hvp_chunk: int = HVP_CHUNK, loss: Loss = CROSS_ENTROPY):
        self.model = model.eval()
        self.loss_fn = loss
        self.chunk, self.hvp_chunk = chunk, hvp_chunk
        self.params = trainable_params(model)
        self.frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
        self.frozen.update(dict(model.named_buffers()))

    def logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**self.frozen, **params}, (x,))

    def loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch."""
        return self.loss_fn.mean(self.logits(params, x), y)

    def sample_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of one sample (no batch dimension), for vmap."""
        return self.loss_fn.mean(self.logits(params, x[None]), y[None])

    def per_sample_grads(
        self, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None, params: Params | None = None
    ) -> torch.Tensor:
        """[N, P] flat loss gradients, one row per sample (vmap over grad, chunked to bound memory)."""
        params = self.params if params is None else params
        chunk = chunk or self.chunk
        g = vmap(grad(self.sample_loss), in_dims=(None, 0, 0))
        # one [N, P] buffer filled chunk by chunk: concatenating a list of chunks holds two copies
        out = next(iter(params.values())).new_empty(len(x), sum(p.numel() for p in params.values()))
        for lo in range(0, len(x), chunk):
            out[lo : lo + chunk] = flatten(g(params, x[lo : lo + chunk], y[lo : lo + chunk]), batch_dims=1)
        return out

    def hvp_fn(self, x: torch.Tensor, y: torch.Tensor, width: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ H v, H the Hessian of the mean loss over (x, y); forward-over-reverse, vmappable over v.

        H v is the weighted sum of the HVPs of sample blocks, so memory stays bounded. A call vmapped over
        `width` vectors carries a tangent per sample and vector, so the blocks hold HVP_SAMPLE_VECTORS·chunk
        / width samples (at most `chunk`): the memory of one call does not grow with the width.
        """
        params = self.params
        per_block = max(1, min(self.chunk, HVP_SAMPLE_VECTORS * self.chunk // width))
        blocks = list(zip(x.split(per_block), y.split(per_block), strict=True))

        def hvp(v: torch.Tensor) -> torch.Tensor:
            tangent = unflatten(v, params)
            total = 0
            for xb, yb in blocks:
                grad_flat = lambda p, xb=xb, yb=yb: flatten(grad(self.loss)(p, xb, yb))  # noqa: E731
                total = total + jvp(grad_flat, (params,), (tangent,))[1] * (len(xb) / len(x))
            return total

        return hvp
