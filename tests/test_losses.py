"""The loss, declared once: cross-entropy's closed-form parts against autograd, and a family's own loss reaching the
training loop, the gradients every method uses, and the methods that need its closed-form parts."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, hessian, vmap
from torch.nn import functional as F

from bayestda.core.errors import UserError
from bayestda.data.subsets import Subset
from bayestda.models.func import FunctionalModel
from bayestda.training.loop import TrainExtras, batch_orders, evaluate, train
from bayestda.training.losses import CROSS_ENTROPY, Loss
from bayestda.training.recipe import TrainConfig, make_optimizer

LOGITS = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
LABELS = torch.tensor([0, 1, 2, 3, 1, 0])


def test_cross_entropy_parts_are_its_derivatives():
    one = lambda f, y: CROSS_ENTROPY.per_sample(f[None], y[None])[0]  # noqa: E731
    torch.testing.assert_close(
        CROSS_ENTROPY.per_sample(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS, reduction="none")
    )
    torch.testing.assert_close(CROSS_ENTROPY.mean(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS))
    torch.testing.assert_close(CROSS_ENTROPY.grad(LOGITS, LABELS), vmap(grad(one))(LOGITS, LABELS))
    factor = CROSS_ENTROPY.hessian_factor(LOGITS)
    torch.testing.assert_close(factor @ factor.transpose(1, 2), vmap(hessian(one))(LOGITS, LABELS))
    # TRAK's Q is ∂CE/∂margin: CE = log(1 + exp(−margin)) on the margin log p_y − log(1 − p_y)
    margin = CROSS_ENTROPY.trak_output(LOGITS, LABELS)
    torch.testing.assert_close(CROSS_ENTROPY.per_sample(LOGITS, LABELS), F.softplus(-margin))
    torch.testing.assert_close(CROSS_ENTROPY.trak_weight(LOGITS, LABELS), torch.sigmoid(-margin))


TWICE = Loss(name="twice cross-entropy", per_sample=lambda f, y: 2 * CROSS_ENTROPY.per_sample(f, y))


def test_a_declared_loss_is_what_training_and_the_gradients_use():
    g = torch.Generator().manual_seed(1)
    data = Subset(torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g),
                  torch.arange(12))  # fmt: skip
    model = torch.nn.Linear(5, 3).double()
    fm, fm2 = FunctionalModel(model), FunctionalModel(model, loss=TWICE)
    torch.testing.assert_close(fm2.per_sample_grads(data.x, data.y), 2 * fm.per_sample_grads(data.x, data.y))
    torch.testing.assert_close(TWICE.grad(LOGITS, LABELS), 2 * CROSS_ENTROPY.grad(LOGITS, LABELS))  # by autograd
    torch.testing.assert_close(evaluate(model, data, TWICE)[0], 2 * evaluate(model, data, CROSS_ENTROPY)[0])
    cfg = TrainConfig(epochs=1, batch_size=12, optimizer="sgd", lr=0.1, weight_decay=0.0)  # one step
    runs = []
    for loss in (CROSS_ENTROPY, TWICE):
        net = torch.nn.Linear(5, 3).double()
        net.load_state_dict(model.state_dict())
        train(net, make_optimizer(net, cfg), data, batch_orders(12, 1, 0), cfg, extras=TrainExtras(loss=loss))
        runs.append(net.weight.detach() - model.weight.detach())
    torch.testing.assert_close(runs[1], 2 * runs[0])  # an SGD step on twice the loss moves twice as far
    with pytest.raises(UserError, match="IF's ggn solver needs the loss's hessian factor, which the twice cross-"):
        TWICE.require("hessian_factor", "IF's ggn solver")
