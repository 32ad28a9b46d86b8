"""The training loss, declared once: what a model family trains with, and what the TDA methods derive from it.

A `Loss` is the per-sample loss ℓ(f, y) of a model output f (the logits) and a target, plus the derivatives in f that
the methods need in closed form:
- `output_grad`, ∂ℓ/∂f: the empirical Fisher's pseudo-gradients (EK-FAC) and any factored loss gradient;
- `hessian_factor`, L with L Lᵀ = ∂²ℓ/∂f²: the Gauss–Newton matrix JᵀLLᵀJ of the `ggn` and `ekfac` solvers;
- `trak_output` and `trak_weight`: TRAK's model output function and its Q = ∂ℓ/∂(that output).
A method that needs a part a loss lacks refuses it in one line. `mean` is the batch mean, which the training loop
and every gradient use; by default the mean of `per_sample`.

A model family declares its loss (`models.families.ModelFamily.loss`); the default, and the paper's, is
`CROSS_ENTROPY`. Nothing else in the package writes a loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, vmap
from torch.nn import functional as F

from ..core.errors import UserError


@dataclass(frozen=True)
class Loss:
    name: str
    # (outputs [..., C], targets [...]) -> per-sample losses [...]; leading dimensions (a stack of models) allowed
    per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # (outputs [B, C], targets [B]) -> the batch mean, a scalar; None: per_sample(...).mean()
    batch_mean: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # (outputs [..., C], targets [...]) -> ∂ℓ/∂outputs [..., C]; None: by autograd of per_sample
    output_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # (outputs [..., C]) -> L [..., C, K] with L Lᵀ = ∂²ℓ/∂outputs² (for a loss whose curvature needs no target)
    hessian_factor: Callable[[torch.Tensor], torch.Tensor] | None = None
    # TRAK: (outputs [..., C], targets [...]) -> the model output [...] it linearises, and Q = ∂ℓ/∂(that output)
    trak_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    trak_weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def mean(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.batch_mean is not None:
            return self.batch_mean(outputs, targets)
        return self.per_sample(outputs, targets).mean()

    def grad(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """∂ℓ/∂outputs for every sample, [..., C]."""
        if self.output_grad is not None:
            return self.output_grad(outputs, targets)
        one = lambda f, t: self.per_sample(f[None], t[None])[0]  # noqa: E731
        flat = vmap(grad(one))(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
        return flat.view(outputs.shape)

    def require(self, part: str, method: str) -> Callable:
        """A closed-form part (`hessian_factor`, `trak_output`, ...), or a one-line refusal naming the method."""
        fn = getattr(self, part)
        if fn is None:
            raise UserError(f"{method} needs the loss's {part.replace('_', ' ')}, which the {self.name} loss does not "
                            "declare (training.losses.Loss); use another method")  # fmt: skip
        return fn


def _ce_per_sample(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [..., C] (e.g. [M, B, C] from a `ModelStack`) against labels [...] or [B]."""
    flat = F.cross_entropy(logits.flatten(0, -2), y.expand(logits.shape[:-1]).flatten(), reduction="none")
    return flat.view(logits.shape[:-1])


def _ce_output_grad(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(f) − onehot(y)."""
    return logits.softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)


def cross_entropy_hessian_factor(logits: torch.Tensor) -> torch.Tensor:
    """L with L Lᵀ = diag(p) − p pᵀ, the Hessian of cross-entropy w.r.t. the logits (p = softmax).

    L = diag(√p) − p √pᵀ; batched over leading dimensions: [..., C] -> [..., C, C].
    """
    p = logits.softmax(-1)
    sqrt_p = p.sqrt()
    return torch.diag_embed(sqrt_p) - p[..., :, None] * sqrt_p[..., None, :]


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p_y − log(1 − p_y) = logit_y − logsumexp of the other logits (TRAK's model output for classification)."""
    is_y = torch.arange(logits.shape[-1], device=logits.device) == y[..., None]
    correct = (logits * is_y).sum(-1)
    return correct - logits.masked_fill(is_y, float("-inf")).logsumexp(-1)


def _margin_weight(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − p_y: the derivative of cross-entropy w.r.t. the margin, TRAK's Q."""
    return 1 - logits.softmax(-1).gather(-1, y[..., None])[..., 0]


CROSS_ENTROPY = Loss(
    name="cross-entropy", per_sample=_ce_per_sample, batch_mean=F.cross_entropy, output_grad=_ce_output_grad,
    hessian_factor=cross_entropy_hessian_factor, trak_output=margin, trak_weight=_margin_weight,
)  # fmt: skip
