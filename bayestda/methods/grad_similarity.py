"""Grad-Dot and Grad-Cos: inner product and cosine of the loss gradients of z_j and z.

Gradients are over all trainable parameters, with the model in eval mode. Both come from one pass:
per-sample gradients in factored form (`features.py`), then one Gram matrix, never a per-pair loop.
"""

from __future__ import annotations

import torch

from ..data import Subset
from ..func import FunctionalModel
from .features import GradFeaturizer


def grad_dot_and_cos(
    fm: FunctionalModel, train: Subset, test: Subset, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """([n_train, n_test] dot products, [n_train, n_test] cosines); `chunk` defaults to `fm.chunk`."""
    chunk = chunk or fm.chunk
    featurizer = GradFeaturizer(fm, train.x)
    try:
        g_train = featurizer.loss_grads(train.x, train.y, chunk)
        train_norm = g_train.sq_norms().sqrt()
        dots, coss = [], []
        for lo in range(0, len(test), 4 * chunk):  # test gradients in blocks: memory stays bounded
            g_test = featurizer.loss_grads(test.x[lo : lo + 4 * chunk], test.y[lo : lo + 4 * chunk], chunk)
            dot = g_train.gram(g_test)
            dots.append(dot)
            coss.append(
                dot / (train_norm[:, None] * g_test.sq_norms().sqrt()[None, :]).clamp_min(torch.finfo(dot.dtype).tiny)
            )
    finally:
        featurizer.close()
    return torch.cat(dots, 1), torch.cat(coss, 1)
