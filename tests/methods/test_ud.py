"""Unrolled differentiation against central finite differences of real retrains (float64), and its refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bayestda.core.errors import UserError
from bayestda.methods import ud
from bayestda.models import families
from bayestda.training.loop import TrainExtras, batch_orders, evaluate, train
from bayestda.training.losses import CROSS_ENTROPY
from bayestda.training.recipe import RecipeOptions, TrainConfig, make_optimizer

from .reference import TinyNet, toy_data

EPS = 1e-4
CFG = TrainConfig(epochs=3, lr=1e-2, batch_size=4)  # 10 images: batches of 4, 4 and 2 per epoch
# SGD as the recipe declares it: with momentum and Nesterov on and off, and plain (the buffer starts at g)
SGD = {
    "sgd": TrainConfig(epochs=3, lr=5e-2, batch_size=4, optimizer="sgd"),
    "momentum": TrainConfig(epochs=3, lr=5e-2, batch_size=4, optimizer="sgd", momentum=0.9),
    "nesterov": TrainConfig(epochs=3, lr=5e-2, batch_size=4, optimizer="sgd", momentum=0.9, nesterov=True),
}


@pytest.fixture(scope="module", params=["cnn", "logreg"])
def run(request):
    """(initial model, train, test, batch order): a small conv net or a linear softmax model, float64."""
    torch.manual_seed(0)
    model = TinyNet() if request.param == "cnn" else nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    return model.double(), toy_data(10), toy_data(5, seed=1), batch_orders(10, CFG.epochs, 3)


def losses_by_epoch(init, data, test, orders, weight=None, cfg=CFG) -> dict[int, torch.Tensor]:
    """Test losses at every epoch end of a real retrain with per-sample loss weights (batch means unchanged)."""
    model = copy.deepcopy(init)
    out = {}
    hook = lambda epoch, model, opt, loss: out.__setitem__(epoch, evaluate(model, test, CROSS_ENTROPY)[0])  # noqa: E731
    train(model, make_optimizer(model, cfg), data, orders, cfg, sample_weight=weight, on_epoch_end=hook)
    return out


@pytest.mark.parametrize("recipe", ["adam", *SGD])
def test_ud_equals_central_differences_of_reweighted_retrains(run, recipe):
    init, data, test, orders = run
    cfg = SGD.get(recipe, CFG)
    tangents = ud.UnrolledTangents(data, test, cfg.weight_decay, score_epochs=[1, 2, 3], chunk=3, hvp_chunk=3)
    model = copy.deepcopy(init)
    train(model, make_optimizer(model, cfg), data, orders, cfg, before_step=tangents.before_step,
          on_epoch_end=tangents.on_epoch_end)  # fmt: skip
    for j in (0, 4, 9):  # in a full batch, in another, in the short last batch of some epoch
        up, down = (losses_by_epoch(init, data, test, orders, torch.ones(10, dtype=torch.float64).index_fill(0, torch.tensor([j]), 1 + s), cfg)
                    for s in (EPS, -EPS))  # fmt: skip
        for epoch in (1, 2, 3):
            derivative = (up[epoch] - down[epoch]) / (2 * EPS)
            torch.testing.assert_close(
                tangents.scores[epoch][j], -derivative, rtol=1e-5, atol=1e-5 * derivative.abs().max()
            )


def test_ud_removes_nothing_at_zero_order(run):
    """τ is a derivative: a training point never reached by any step (epochs = 0) has τ = 0, and the scores of
    a point depend on its own weight only (the number of tangents per HVP does not change them)."""
    init, data, test, orders = run
    results = []
    for chunk in (1, 10):
        tangents = ud.UnrolledTangents(data, test, CFG.weight_decay, score_epochs=[2], chunk=4, hvp_chunk=chunk)
        model = copy.deepcopy(init)
        train(model, make_optimizer(model, CFG), data, orders[:2], TrainConfig(epochs=2, lr=CFG.lr, batch_size=4),
              before_step=tangents.before_step, on_epoch_end=tangents.on_epoch_end)  # fmt: skip
        results.append(tangents.scores[2])
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-14)
    assert results[0].abs().sum() > 0


def test_families_that_augment_or_drop_out_are_refused_in_one_line(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(families, "train_extras", lambda config: TrainExtras(rng_seed=1))
    samples = SimpleNamespace(configs=[{"family": "vit"}])
    with pytest.raises(
        UserError,
        match=r"dropout or random augmentation, whose random numbers a step.s replay does not reproduce; use loo-scratch",
    ):
        ud.score(samples, ud.UDOptions(chunk=4, hvp_chunk=4), torch.device("cpu"))


@pytest.fixture(scope="module")
def samples(tmp_path_factory, data_root):
    """One cnn seed trained for 3 epochs on MNIST3 20pc (60 images), scored on 8 test images."""
    import dataclasses

    from helpers import single_thread

    from bayestda.core.paths import read_seeds
    from bayestda.data.subsets import Subset
    from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
    from bayestda.runs.samples import load_seed_samples

    out, seed = tmp_path_factory.mktemp("ud"), read_seeds()[0]
    spec = EnsembleSpec("mnist3", 20, "cnn2", recipe=RecipeOptions(epochs=3))
    with single_thread():
        train_ensemble(spec, [seed], data_root, out, torch.device("cpu"))
    loaded = load_seed_samples(spec.model, "mnist3", 20, seed, out, data_root)
    test = loaded.test
    return dataclasses.replace(loaded, test=Subset(test.x[:8], test.y[:8], test.idx[:8]))


@pytest.mark.slow  # a trained seed and two replays; the maths is checked by the fast tests above
def test_the_step_replays_the_stored_run_and_scores_its_checkpoint_epochs(samples):
    """ud.score (through the replay of the real training loop and its checks) equals the same tangents carried by
    hand through the seed's initialisation, batch order and optimiser settings, epoch by epoch. (Float32 here, as
    the step; the maths is checked in float64 above. In float32 the two differ by ≈ 2% of the norm on this seed:
    Adam's step is ill-conditioned in coordinates whose gradient is near its ε, see REPRODUCTION.md.)"""
    from helpers import single_thread

    config = samples.configs[-1]
    cfg = TrainConfig.from_config(config)
    with single_thread():
        got, diagnostics = ud.score(samples, ud.UDOptions(chunk=8, hvp_chunk=16), torch.device("cpu"))
        model = families.init(config)
        tangents = ud.UnrolledTangents(samples.train, samples.test, config["weight_decay"], samples.epochs, chunk=8,
                                       hvp_chunk=16)  # fmt: skip
        train(model, make_optimizer(model, cfg), samples.train, batch_orders(60, cfg.epochs, config["batch_seed"]), cfg,
              extras=families.train_extras(config), before_step=tangents.before_step,
              on_epoch_end=tangents.on_epoch_end)  # fmt: skip
    assert got.shape == (len(samples.epochs), 60, 8) and diagnostics[0]["max_rel_weight_diff"] == 0.0
    want = torch.stack([tangents.scores[e] for e in samples.epochs])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert want.abs().max() > 0


@pytest.mark.slow
def test_a_seed_whose_checkpoints_the_replay_misses_is_refused(samples):
    from helpers import with_last_checkpoint_moved

    doctored = with_last_checkpoint_moved(samples)
    with pytest.raises(UserError, match=r"does not reproduce its checkpoint of epoch 3 .*retrain it with: "):
        ud.score(doctored, ud.UDOptions(chunk=8, hvp_chunk=16), torch.device("cpu"))


def test_float64_tangents_are_the_derivative_along_the_float32_run():
    """On a float32 run, `dtype=float64` carries the forward-mode derivative of each Adam step taken in float64 at
    that step's float32 state: here torch.func.jvp through a plainly written step (z_j's loss weighted 1 + ε, batch
    means over the batch size), carried from step to step and read against float64 test gradients."""
    from torch.func import functional_call, grad, jvp
    from torch.nn import functional as F

    torch.manual_seed(0)
    init, data, test = TinyNet(), toy_data(10, dtype=torch.float32), toy_data(5, seed=1, dtype=torch.float32)
    orders = batch_orders(10, CFG.epochs, 3)
    names = [k for k, _ in init.named_parameters()]
    flat = lambda ts: torch.cat([t.detach().reshape(-1).double() for t in ts])  # noqa: E731
    steps, ends = [], {}

    def record(epoch, positions, model, optimizer):
        state = [optimizer.state[p] for p in model.parameters()]
        moments = [flat([s.get(k, torch.zeros_like(p)) for s, p in zip(state, model.parameters(), strict=True)])
                   for k in ("exp_avg", "exp_avg_sq")]  # fmt: skip
        steps.append((epoch, positions.clone(), flat(model.parameters()), *moments, int(state[0].get("step", 0))))
        for t in tangents:
            t.before_step(epoch, positions, model, optimizer)

    def on_epoch_end(epoch, model, optimizer, loss):
        ends[epoch] = flat(model.parameters())
        for t in tangents:
            t.on_epoch_end(epoch, model, optimizer, loss)

    tangents = [ud.UnrolledTangents(data, test, CFG.weight_decay, [1, 2, 3], chunk=3, hvp_chunk=3, dtype=dtype)
                for dtype in (torch.float64, None)]  # fmt: skip
    model = copy.deepcopy(init)
    optimizer = make_optimizer(model, CFG)
    train(model, optimizer, data, orders, CFG, before_step=record, on_epoch_end=on_epoch_end)
    (beta1, beta2), adam_eps, lr = (optimizer.param_groups[0][k] for k in ("betas", "eps", "lr"))

    net = copy.deepcopy(init).double()
    shapes = [p.shape for p in init.parameters()]

    def unflat(theta):
        chunks = theta.split([s.numel() for s in shapes])
        return {k: c.view(s) for k, c, s in zip(names, chunks, shapes, strict=True)}

    x64, tx64 = data.x.double(), test.x.double()

    def adam_step(theta, m, v, eps_w, positions, j, t):
        weight = 1 + eps_w * (positions == j).double()
        loss = lambda th: (weight * F.cross_entropy(functional_call(net, unflat(th), (x64[positions],)),  # noqa: E731
                                                    data.y[positions], reduction="none")).mean()  # fmt: skip
        g = grad(loss)(theta) + CFG.weight_decay * theta
        m2, v2 = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        c1, c2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
        return theta - lr / c1 * m2 / ((v2 / c2).sqrt() + adam_eps), m2, v2

    test_loss = lambda th, k: F.cross_entropy(functional_call(net, unflat(th), (tx64[k : k + 1],)), test.y[k : k + 1])  # noqa: E731
    errors = {torch.float64: 0.0, None: 0.0}
    for j in (0, 4, 9):
        dot = [torch.zeros_like(steps[0][2]) for _ in range(3)]
        for i, (epoch, positions, theta, m, v, t) in enumerate(steps):
            dot = list(jvp(lambda th, mm, vv, e: adam_step(th, mm, vv, e, positions, j, t),  # noqa: B023
                           (theta, m, v, torch.zeros((), dtype=torch.float64)),
                           (*dot, torch.ones((), dtype=torch.float64)))[1])  # fmt: skip
            if i + 1 == len(steps) or steps[i + 1][0] != epoch:  # the epoch's last step
                want = -torch.stack([grad(test_loss)(ends[epoch], k) @ dot[0] for k in range(len(test))])
                for tg in tangents:
                    err = ((tg.scores[epoch][j] - want).abs().max() / want.abs().max()).item()
                    errors[tg.dtype] = max(errors[tg.dtype], err)
    assert errors[torch.float64] < 1e-12  # the same derivative, up to float64 rounding
    assert errors[None] > 1e-9  # float32 tangents are not (on this well-conditioned toy, by ~1e-7)
