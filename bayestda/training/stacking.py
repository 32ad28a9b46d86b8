"""Many models of one architecture trained as one module: LOO's retrains in one pass on a GPU.

The recipe's optimizers (Adam, SGD with momentum) and their L2 weight decay act elementwise, so one optimizer
over parameters stacked to [M, ...] is M independent ones. With the forward pass vmapped over the stack (a convolution becomes
one grouped convolution), the shared training loop (`training.loop.train`) trains M models per step, each
on the same batches with its own sample weights. The result equals M separate runs up to float
rounding (tests/test_stacking.py checks it in float64).

On a GPU one small CNN per step leaves the device idle (LOO retrains are launch-bound); a stack of
hundreds fills it. On a CPU the sequential loop is faster (BENCHMARKS.md), so stacks are the GPU default.
A model with buffers updated in training (BatchNorm's running statistics) or random numbers drawn in training
(dropout) cannot share a stack (`runs.retrains.unstackable`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

# Images per evaluation chunk summed over the stack: M models × chunk images stay within a few GiB.
STACK_EVAL_IMAGES = 8192


class ModelStack(nn.Module):
    """M copies of `template`'s architecture with their own trainable weights; x [B, ...] -> logits [M, B, C], or
    with `per_model`, one batch per model: x [M, B, ...] -> logits [M, B, C].

    Frozen parameters and buffers are the template's, shared by all M. The template must not draw
    random numbers in training (dropout would draw one mask for the whole stack).
    """

    def __init__(self, template: nn.Module, states: list[dict[str, torch.Tensor]]):
        super().__init__()
        self._template = [template]  # kept outside the module tree: its trainable weights are only a layout
        params = {k: p for k, p in template.named_parameters() if p.requires_grad}
        self.names = list(params)
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([s[k].to(p) for s in states])) for k, p in params.items()
        )
        self.eval_chunk = max(1, STACK_EVAL_IMAGES // len(states))

    def __len__(self) -> int:
        return self.stacked[0].shape[0]

    def forward(self, x: torch.Tensor, per_model: bool = False) -> torch.Tensor:
        template = self._template[0]

        def one(params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
            return functional_call(template, dict(zip(self.names, params, strict=True)), (x,))

        return vmap(one, in_dims=(0, 0 if per_model else None))(tuple(self.stacked), x)

    def state(self, m: int) -> dict[str, torch.Tensor]:
        """Model m's trainable weights, on the CPU."""
        return {k: p[m].detach().cpu().clone() for k, p in zip(self.names, self.stacked, strict=True)}

    def train(self, mode: bool = True) -> ModelStack:
        self._template[0].train(mode)
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._template[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)
