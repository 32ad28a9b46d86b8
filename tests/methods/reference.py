"""Slow, obvious references and small models shared by the method tests of both families (CNN and ViT).

Every reference works on a model's *trainable* parameters (all of them for the CNNs; LoRA and the
classifier for the ViT), in `named_parameters` order, as the library does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev
from torch.nn import functional as F

from bayestda.data.subsets import Subset


class TinyNet(nn.Module):
    """conv → gelu → fc → gelu → fc on 6×6 images: 167 parameters, small enough for explicit Hessians."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc1 = nn.Linear(32, 4)
        self.fc2 = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(F.gelu(self.conv(x)).flatten(1))))


def toy_data(n: int, seed: int = 0, classes: int = 3, dtype=torch.float64) -> Subset:
    """Separable blobs: each class lights up its own image quadrant, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.3 * torch.randn(n, 1, 6, 6, generator=g, dtype=dtype)
    for c in range(classes):
        r, col = divmod(c, 2)
        x[y == c, :, 3 * r : 3 * r + 3, 3 * col : 3 * col + 3] += 1.0
    return Subset(x, y, torch.arange(n))


def micro_vit(path, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """The micro ViT of `micro_vit_dir` with LoRA r=2 and a 3-way classifier: ~300 trainable parameters."""
    from bayestda.models.vit import LoraSpec, build_vit

    torch.manual_seed(seed)
    return build_vit(str(path), num_labels=3, lora=LoraSpec(r=2, alpha=4)).to(dtype).eval()


def trained_tiny(train: Subset, steps: int = 300, seed: int = 0, model: nn.Module | None = None) -> nn.Module:
    """`model` (default: a new TinyNet) after full-batch Adam steps on `train`, in eval mode."""
    torch.manual_seed(seed)
    model = TinyNet().to(train.x.dtype) if model is None else model.train()
    opt = torch.optim.Adam(trainable(model), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return model.eval()


def trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainable(model)])


def _unflat(model, vec):
    out, i = {}, 0
    for k, p in model.named_parameters():
        if p.requires_grad:
            out[k] = vec[i : i + p.numel()].view_as(p)
            i += p.numel()
    return out


def mean_loss_of_flat(model: nn.Module, x, y):
    return lambda vec: F.cross_entropy(functional_call(model, _unflat(model, vec), (x,)), y)


def per_pair_grads(model: nn.Module, data: Subset) -> list[torch.Tensor]:
    """One torch.autograd.grad call per sample: the slow, obvious per-sample gradient."""
    out = []
    for i in range(len(data)):
        model.zero_grad()
        loss = F.cross_entropy(model(data.x[i : i + 1]), data.y[i : i + 1])
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, trainable(model))]))
    return out


def explicit_hessian(model: nn.Module, data: Subset) -> torch.Tensor:
    return hessian(mean_loss_of_flat(model, data.x, data.y))(flat_params(model))


def explicit_ggn(model: nn.Module, data: Subset) -> torch.Tensor:
    """(1/n) Σ Jᵢᵀ (diag p − p pᵀ) Jᵢ with per-sample Jacobians of the logits."""
    theta = flat_params(model)
    total = torch.zeros(len(theta), len(theta), dtype=theta.dtype)
    for i in range(len(data)):
        logits_of = lambda vec, i=i: functional_call(model, _unflat(model, vec), (data.x[i : i + 1],))[0]  # noqa: E731
        jac = jacrev(logits_of)(theta)  # [C, P]
        p = logits_of(theta).softmax(0)
        total += jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    return total / len(data)
