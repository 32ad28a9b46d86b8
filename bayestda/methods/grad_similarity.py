"""Grad-Dot and Grad-Cos: inner product and cosine of the loss gradients of z_j and z.

Gradients are over all trainable parameters, with the model in eval mode. Both come from one pass:
per-sample gradients in factored form (`features.py`), then one Gram matrix, never a per-pair loop.
"""

from __future__ import annotations

import torch

from ..data.subsets import Subset
from ..models.func import FunctionalModel
from .features import GradFeaturizer, gram_with_test
from .registry import MemoryOptions, Method, register


def _with_train_grads(fm: FunctionalModel, train: Subset, test: Subset, chunk: int, columns_of) -> torch.Tensor:
    """`gram_with_test` with the columns `columns_of(training gradient features)` maps each test block to."""
    featurizer = GradFeaturizer(fm, train.x)
    try:
        g_train = featurizer.loss_grads(train.x, train.y, chunk)
        return gram_with_test(featurizer, test, columns_of(g_train), 4 * chunk, chunk)
    finally:
        featurizer.close()


def grad_dots(fm: FunctionalModel, train: Subset, test: Subset, chunk: int | None = None) -> torch.Tensor:
    """[n_train, n_test] dot products only; `chunk` defaults to `fm.chunk`."""
    return _with_train_grads(fm, train, test, chunk or fm.chunk, lambda g_train: g_train.gram)


def grad_dot_and_cos(
    fm: FunctionalModel, train: Subset, test: Subset, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """([n_train, n_test] dot products, [n_train, n_test] cosines); `chunk` defaults to `fm.chunk`."""

    def dot_and_cos(g_train):
        train_norm = g_train.sq_norms().sqrt()

        def columns(g_test):
            dot = g_train.gram(g_test)
            norms = (train_norm[:, None] * g_test.sq_norms().sqrt()[None, :]).clamp_min(torch.finfo(dot.dtype).tiny)
            return torch.stack([dot, dot / norms])

        return columns

    dots, coss = _with_train_grads(fm, train, test, chunk or fm.chunk, dot_and_cos)
    return dots, coss


def _score(which: int):
    def score(fm: FunctionalModel, train: Subset, test: Subset, opts, run_config: dict):
        return grad_dot_and_cos(fm, train, test)[which], {}

    return score


GD = register(Method(name="gd", label="GD", helps_sign=+1, options=MemoryOptions, score=_score(0)))  # fmt: skip
GC = register(Method(name="gc", label="GC", helps_sign=+1, options=MemoryOptions, score=_score(1)))  # fmt: skip
