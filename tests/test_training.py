"""The training loop: determinism, posterior modes, loss weighting, checkpoints."""

from __future__ import annotations

import pytest
import torch
from helpers import init_model

from bayestda import load_checkpoint
from bayestda.core.paths import REPO_ROOT, checkpoint_file
from bayestda.data.subsets import load_subset
from bayestda.runs.ensemble import EnsembleSpec, train_seed
from bayestda.training.loop import batch_loss, batch_orders, fast_layout, per_sample_losses, train
from bayestda.training.losses import CROSS_ENTROPY
from bayestda.training.posterior import posterior_seeds
from bayestda.training.recipe import RecipeOptions, TrainConfig, make_optimizer


@pytest.fixture(scope="module")
def mnist10(data_root):
    return (
        load_subset("mnist3", "train", 10, data_root, REPO_ROOT),
        load_subset("mnist3", "test", None, data_root, REPO_ROOT),
    )


def train_weights(mnist10, mode, seed, epochs=3):
    init_seed, batch_seed = posterior_seeds(mode, seed)
    model = init_model("cnn2", "mnist3", init_seed)
    cfg = TrainConfig(epochs=epochs)
    train(model, make_optimizer(model, cfg), mnist10[0], batch_orders(len(mnist10[0]), epochs, batch_seed), cfg)
    return model.state_dict()


def states_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_bit_identical_other_seed_differs(mnist10):
    a, b, c = (train_weights(mnist10, "de", s) for s in (3, 3, 4))
    assert states_equal(a, b)
    assert not any(torch.equal(a[k], c[k]) for k in a)


def test_global_rng_does_not_leak_into_runs(mnist10):
    torch.manual_seed(123)
    a = train_weights(mnist10, "de", 5)
    torch.manual_seed(456)
    torch.rand(10)
    assert states_equal(a, train_weights(mnist10, "de", 5))


@pytest.mark.parametrize(
    ("mode", "same_init", "same_order"), [("de", False, False), ("de-init", False, True), ("de-batch", True, False)]
)
def test_posterior_modes_control_the_right_noise_source(mode, same_init, same_order):
    (i1, b1), (i2, b2) = posterior_seeds(mode, 1), posterior_seeds(mode, 2)
    init_equal = states_equal(
        init_model("cnn2", "mnist3", i1).state_dict(), init_model("cnn2", "mnist3", i2).state_dict()
    )
    order_equal = torch.equal(batch_orders(150, 15, b1), batch_orders(150, 15, b2))
    assert init_equal == same_init
    assert order_equal == same_order


def test_init_and_batch_streams_are_distinct():
    """Seed s drives both streams under `de`; they must not be the same random numbers."""
    gen_init = torch.Generator()
    from bayestda.core.seeds import stream_seed

    assert stream_seed(7, "init") != stream_seed(7, "batch")
    gen_init.manual_seed(stream_seed(7, "init"))
    assert not torch.equal(torch.randperm(50, generator=gen_init), batch_orders(50, 1, 7)[0])


def test_batch_orders_are_permutations():
    orders = batch_orders(37, 4, 11)
    assert orders.shape == (4, 37)
    assert all(sorted(o.tolist()) == list(range(37)) for o in orders)
    assert not torch.equal(orders[0], orders[1])


def test_weighted_batch_loss():
    model = init_model("cnn2", "mnist3", 0)
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    full = batch_loss(model, x, y)
    assert torch.allclose(batch_loss(model, x, y, torch.ones(6)), full)
    # a zero weight drops the sample's loss but keeps it in the denominator (the paper's LOO)
    w = torch.tensor([1.0, 1, 0, 1, 1, 1])
    keep = [0, 1, 3, 4, 5]
    assert torch.allclose(batch_loss(model, x, y, w), batch_loss(model, x[keep], y[keep]) * 5 / 6)


def test_checkpoint_round_trip_reproduces_logits(mnist10, tmp_path):
    train_data, test_data = mnist10
    spec = EnsembleSpec("mnist3", 10, recipe=RecipeOptions(epochs=6))
    metrics = train_seed(spec, 0, train_data, test_data, tmp_path, "cpu")
    model, config = load_checkpoint(checkpoint_file(tmp_path, 6))
    assert not model.training
    assert config["epoch"] == 6 and config["seed"] == 0 and config["task"] == "mnist3" and config["arch"] == "cnn2"
    assert config["lr"] == 1e-3 and config["weight_decay"] == 5e-3 and config["batch_size"] == 32
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 7))
    # the same run, replayed in memory, gives the same logits as the reloaded checkpoint
    replay = init_model("cnn2", "mnist3", config["init_seed"])
    cfg = TrainConfig(epochs=6)
    train(replay, make_optimizer(replay, cfg), train_data, batch_orders(30, 6, config["batch_seed"]), cfg)
    assert states_equal(model.state_dict(), replay.state_dict())  # bit-identical weights
    x = test_data.x[:50]
    with torch.no_grad():  # and identical logits, both evaluated in the training layout
        assert torch.equal(model(fast_layout(model, x)), replay.eval()(fast_layout(replay, x)))


def test_float64_losses_resolve_confident_predictions():
    """A cross-entropy of ~4e-9 rounds to 0 in float32; taken in float64 from the same float32 logits, it is exact."""
    model = torch.nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[20.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
        model.bias.zero_()
    x, y = torch.tensor([[1.0, 0.0], [0.5, 0.0]]), torch.tensor([0, 0])
    f32 = per_sample_losses(model, x, y, CROSS_ENTROPY)[0]
    f64 = per_sample_losses(model, x, y, CROSS_ENTROPY, loss_dtype=torch.float64)[0]
    logits = model(x).detach().double()
    reference = torch.log1p(torch.exp(logits[:, 1:] - logits[:, :1]).sum(1))  # log(1 + 2 e^-20), log(1 + 2 e^-10)
    assert f32[0] == 0 and f64.dtype == torch.float64
    torch.testing.assert_close(f64, reference, rtol=1e-6, atol=0)  # float64's 1 + ε costs ~5e-8 relative at 4e-9
