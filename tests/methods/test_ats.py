"""ATS against a loop that makes one real step of a fresh torch optimizer (the recipe's: Adam or SGD) per training
sample."""

import copy

import pytest
import torch
from torch.nn import functional as F

from bayestda.methods.ats import ats_scores, fresh_adam_step, fresh_sgd_step
from bayestda.models.func import FunctionalModel
from bayestda.training.recipe import TrainConfig

from .reference import TinyNet, micro_vit, toy_data, trained_tiny


def reference_ats(model, train, test, lr, wd, loss_dtype=torch.float64, optimizer=torch.optim.Adam, **kwargs):
    model.eval()
    with torch.no_grad():
        base = F.cross_entropy(model(test.x).to(loss_dtype), test.y, reduction="none")
    rows = []
    for j in range(len(train)):
        m = copy.deepcopy(model)
        opt = optimizer(m.parameters(), lr=lr, weight_decay=wd, **kwargs)
        opt.zero_grad()
        F.cross_entropy(m(train.x[j : j + 1]), train.y[j : j + 1]).backward()
        opt.step()
        with torch.no_grad():
            rows.append(F.cross_entropy(m(test.x).to(loss_dtype), test.y, reduction="none") - base)
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fresh_adam_step_is_torch_adam_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    theta, grads = torch.randn(300, generator=g, dtype=dtype), torch.randn(4, 300, generator=g, dtype=dtype)
    stepped = fresh_adam_step(theta, grads, 1e-3, 5e-3)
    for row, grad in zip(stepped, grads, strict=True):
        p = torch.nn.Parameter(theta.clone())
        opt = torch.optim.Adam([p], lr=1e-3, weight_decay=5e-3)
        p.grad = grad.clone()
        opt.step()
        assert torch.equal(p.detach(), row)


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.9, True)])
def test_fresh_sgd_step_is_torch_sgd(momentum, nesterov):
    g = torch.Generator().manual_seed(0)
    theta, grads = (
        torch.randn(300, generator=g, dtype=torch.float64),
        torch.randn(4, 300, generator=g, dtype=torch.float64),
    )
    stepped = fresh_sgd_step(theta, grads, 0.05, 5e-3, momentum, nesterov)
    for row, grad in zip(stepped, grads, strict=True):
        p = torch.nn.Parameter(theta.clone())
        opt = torch.optim.SGD([p], lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=5e-3)
        p.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), row, rtol=0, atol=1e-15)


def test_ats_takes_the_recipe_s_sgd_step():
    """A run trained with SGD and Nesterov momentum: ATS's fresh step is that optimizer's, not Adam's."""
    torch.manual_seed(1)
    train, test = toy_data(7), toy_data(5, seed=2)
    model = TinyNet().double()
    recipe = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, weight_decay=1e-3, momentum=0.9, nesterov=True)
    got = ats_scores(FunctionalModel(model), train, test, recipe, chunk=3)
    ref = reference_ats(model, train, test, 0.05, 1e-3, optimizer=torch.optim.SGD, momentum=0.9, nesterov=True)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-12)
    assert not torch.allclose(got, ats_scores(FunctionalModel(model), train, test, TrainConfig(epochs=1), chunk=3))


@pytest.mark.parametrize("net", ["tiny", "vit"])
def test_ats_equals_real_adam_loop(net, micro_vit_dir):
    torch.manual_seed(1)
    train, test = toy_data(7), toy_data(5, seed=2)
    if net == "tiny":
        model = TinyNet().double()
    else:  # trained a little, so LoRA's B is no longer zero; only LoRA and the classifier take the step
        model = trained_tiny(train, steps=20, model=micro_vit(micro_vit_dir))
    got = ats_scores(FunctionalModel(model), train, test, TrainConfig(epochs=1), chunk=3)
    ref = reference_ats(model, train, test, 1e-3, 5e-3)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-12)


def test_ats_float64_losses_of_a_float32_model():
    """`loss_dtype=float64` on a float32 model: the loop's real Adam steps, with float64 test losses."""
    torch.manual_seed(1)
    train, test = toy_data(7, dtype=torch.float32), toy_data(5, seed=2, dtype=torch.float32)
    model = TinyNet()
    got = ats_scores(FunctionalModel(model), train, test, TrainConfig(epochs=1), chunk=3, loss_dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference_ats(model, train, test, 1e-3, 5e-3), rtol=1e-4, atol=1e-7)
