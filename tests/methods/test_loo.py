"""LOO protocols against a plain sequential retrain loop, and independence from the number of workers.

The CNN on real MNIST images, and the micro LoRA ViT on toy images, whose retrains must also repeat the
run's crops, dropout and linear lr decay.
"""

import dataclasses

import pytest
import torch
from helpers import build_model, init_model, single_thread
from torch.nn import functional as F

from bayestda.core.errors import UserError
from bayestda.core.paths import REPO_ROOT
from bayestda.data.subsets import Subset, load_subset
from bayestda.methods import loo
from bayestda.models import families
from bayestda.models.vit import LoraSpec, vit_run_config
from bayestda.runs import retrains
from bayestda.training.loop import batch_orders, evaluate, train
from bayestda.training.losses import CROSS_ENTROPY
from bayestda.training.recipe import TrainConfig, make_optimizer

from .reference import toy_data

CFG = TrainConfig(epochs=4, batch_size=5)  # 12 samples: batches of 5, 5, 2 every epoch
INIT_SEED, BATCH_SEED = 3, 7


@pytest.fixture(scope="module")
def ctx_factory(data_root):
    full_train = load_subset("mnist3", "train", 10, data_root, REPO_ROOT)
    full_test = load_subset("mnist3", "test", None, data_root, REPO_ROOT)
    train_data = Subset(full_train.x[:12], full_train.y[:12], full_train.idx[:12])
    test_data = Subset(full_test.x[:20], full_test.y[:20], full_test.idx[:20])
    orders = batch_orders(12, CFG.epochs, BATCH_SEED)
    states = {}
    with single_thread():
        model = init_model("cnn2", "mnist3", INIT_SEED)
        train(model, make_optimizer(model, CFG), train_data, orders, CFG,
              on_epoch_end=lambda e, m, o, _loss: states.__setitem__(e, {k: v.clone() for k, v in m.state_dict().items()}))  # fmt: skip

    def make(protocol):
        return retrains.RetrainContext(
            {"arch": "cnn2", "task": "mnist3", "init_seed": INIT_SEED}, train_data, test_data, CFG, orders,
            start_states=[states[3], states[4]] if protocol != "scratch" else [],
            eval_epochs=(3, 4) if protocol == "scratch" else (CFG.epochs,),
        )  # fmt: skip

    return make, states


def reference_retrain(model, x, y, orders, leave_out, mode, eval_epochs, test, vit=None, loss_dtype=torch.float32,
                      optimizer=None):  # fmt: skip
    """The obvious loop: fresh Adam (or `optimizer(params)`), the given batch order, z_j dropped or its loss zeroed
    (as the original).

    The CNN runs in the library's memory layout (channels-last) so that the comparison can be bit for
    bit. For the ViT (`vit`: the run's TrainExtras), each batch goes through the run's crop function,
    dropout draws from the run's seed, and torch's LambdaLR decays the lr linearly per batch.
    """
    if vit is None:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        test_x = test.x.contiguous(memory_format=torch.channels_last)
    else:
        test_x = test.x
        torch.manual_seed(vit.rng_seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(params) if optimizer else torch.optim.Adam(params, lr=CFG.lr, weight_decay=CFG.weight_decay)
    total_steps = len(orders) * len(orders[0].split(CFG.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total_steps) if vit else None
    out = {}
    for epoch in range(1, len(orders) + 1):
        model.train()
        for batch in orders[epoch - 1].split(CFG.batch_size):
            if mode == "drop" and leave_out is not None:
                batch = batch[batch != leave_out]
            xb = x[batch] if vit is None else vit.augment(x[batch], epoch, batch)
            opt.zero_grad()
            losses = F.cross_entropy(model(xb), y[batch], reduction="none")
            if mode == "zero" and leave_out is not None:
                losses = torch.where(batch == leave_out, torch.zeros_like(losses), losses)
            losses.mean().backward()
            opt.step()
            if sched is not None:
                sched.step()
        if epoch in eval_epochs:
            model.eval()
            with torch.no_grad():
                out[epoch] = F.cross_entropy(model(test_x).to(loss_dtype), test.y, reduction="none")
    return torch.stack([out[e] for e in eval_epochs])


def test_retrains_take_the_recipe_s_optimizer(ctx_factory):
    """A run trained with SGD and momentum: its retrains take fresh SGD steps, as the obvious loop with torch's SGD."""
    make, _ = ctx_factory
    sgd = TrainConfig(epochs=4, batch_size=5, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3)
    ctx = dataclasses.replace(make("scratch"), cfg=sgd)
    with single_thread():
        got = retrains.run_retrain(ctx, retrains.Retrain(3, zero_weight=False))
        ref = reference_retrain(init_model("cnn2", "mnist3", INIT_SEED), ctx.train_data.x, ctx.train_data.y, ctx.orders,
                                3, "drop", (3, 4), ctx.test_data,
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3))  # fmt: skip
        adam = retrains.run_retrain(make("scratch"), retrains.Retrain(3, zero_weight=False))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, adam, rtol=1e-3)


def from_state(state):
    model = build_model("cnn2", "mnist3")
    model.load_state_dict(state)
    return model


def test_scratch_equals_sequential_retrains(ctx_factory):
    make, states = ctx_factory
    ctx = make("scratch")
    base = torch.zeros(2, 20)
    got, diag = loo.loo_scores("scratch", ctx, base, workers=1)
    with single_thread():
        x, y = ctx.train_data.x, ctx.train_data.y
        full = reference_retrain(
            init_model("cnn2", "mnist3", INIT_SEED), x, y, ctx.orders, None, "drop", (3, 4), ctx.test_data
        )
        for j in range(12):
            ref = reference_retrain(
                init_model("cnn2", "mnist3", INIT_SEED), x, y, ctx.orders, j, "drop", (3, 4), ctx.test_data
            )
            assert torch.equal(got[:, j], ref - full), f"sample {j}"
    # the full retrain reproduces the run that produced the checkpoints (evaluated with the same thread count)
    with single_thread(), torch.no_grad():
        ckpt_losses = torch.stack([evaluate(from_state(states[e]), ctx.test_data, CROSS_ENTROPY)[0] for e in (3, 4)])
    _, diag = loo.loo_scores("scratch", ctx, ckpt_losses, workers=1)
    assert diag["max_abs_full_retrain_minus_checkpoint_test_loss"] == 0.0


@pytest.mark.parametrize("protocol", ["paper", "paired"])
def test_continuation_protocols_equal_sequential_retrains(ctx_factory, protocol):
    make, states = ctx_factory
    ctx = make(protocol)
    x, y, test = ctx.train_data.x, ctx.train_data.y, ctx.test_data
    base = torch.stack([evaluate(from_state(states[e]), test, CROSS_ENTROPY)[0] for e in (3, 4)])
    got, _ = loo.loo_scores(protocol, ctx, base, workers=1)
    with single_thread():
        for c, e in enumerate((3, 4)):
            full = reference_retrain(from_state(states[e]), x, y, ctx.orders, None, "zero", (CFG.epochs,), test)[0]
            for j in range(12):
                ref = reference_retrain(from_state(states[e]), x, y, ctx.orders, j, "zero", (CFG.epochs,), test)[0]
                expected = ref - (base[c] if protocol == "paper" else full)
                assert torch.equal(got[c, j], expected), f"checkpoint {e}, sample {j}"


def test_float64_test_losses_equal_sequential_retrains(ctx_factory):
    """`loss_dtype="float64"`: the same retrains, with the test cross-entropy taken in float64."""
    make, _ = ctx_factory
    ctx = dataclasses.replace(make("scratch"), loss_dtype=torch.float64)
    got, _ = loo.loo_scores("scratch", ctx, torch.zeros(2, 20, dtype=torch.float64), workers=1)
    assert got.dtype == torch.float64
    with single_thread():
        x, y = ctx.train_data.x, ctx.train_data.y
        full = reference_retrain(init_model("cnn2", "mnist3", INIT_SEED), x, y, ctx.orders, None, "drop", (3, 4),
                                 ctx.test_data, loss_dtype=torch.float64)  # fmt: skip
        for j in (0, 7):
            ref = reference_retrain(init_model("cnn2", "mnist3", INIT_SEED), x, y, ctx.orders, j, "drop", (3, 4),
                                    ctx.test_data, loss_dtype=torch.float64)  # fmt: skip
            assert torch.equal(got[:, j], ref - full), f"sample {j}"


def test_results_do_not_depend_on_workers(ctx_factory, monkeypatch):
    make, _ = ctx_factory
    ctx = make("scratch")
    one, _ = loo.loo_scores("scratch", ctx, torch.zeros(2, 20), workers=1)
    monkeypatch.setattr(retrains, "POOL_START_S", 0.0)  # these retrains are short: the pool only when forced
    two, _ = loo.loo_scores("scratch", ctx, torch.zeros(2, 20), workers=2)
    assert torch.equal(one, two)


def test_short_retrains_stay_in_this_process(ctx_factory, monkeypatch):
    """When the retrains would finish before a pool of spawned workers started, no pool is started."""
    make, _ = ctx_factory

    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started")

    monkeypatch.setattr(retrains, "ProcessPoolExecutor", no_pool)
    monkeypatch.setattr(retrains, "POOL_START_S", 1e6)
    assert len(retrains.run_retrains(make("scratch"), [retrains.Retrain(j) for j in range(3)], 2, "")) == 3
    monkeypatch.setattr(retrains, "POOL_START_S", 0.0)
    with pytest.raises(AssertionError, match="a worker pool was started"):
        retrains.run_retrains(make("scratch"), [retrains.Retrain(j) for j in range(3)], 2, "")


def test_unknown_protocol(ctx_factory):
    with pytest.raises(ValueError, match="unknown LOO protocol"):
        loo.loo_scores("bogus", ctx_factory[0]("paper"), torch.zeros(2, 20), workers=1)


# ----------------------------------------------------------------------------- the LoRA ViT


@pytest.fixture(scope="module")
def vit_setup(micro_vit_dir):
    config = {
        "family": "vit", "arch": "vit", "task": "mnist3", "init_seed": INIT_SEED, "batch_seed": BATCH_SEED,
        **vit_run_config(str(micro_vit_dir), LoraSpec(r=2, alpha=4), "fp32", num_labels=3),
    }  # fmt: skip
    train_data, test_data = toy_data(12, dtype=torch.float32), toy_data(20, seed=5, dtype=torch.float32)
    orders = batch_orders(12, CFG.epochs, BATCH_SEED)
    states = {}
    with single_thread():
        model = families.init(config)
        train(model, make_optimizer(model, CFG), train_data, orders, CFG, extras=families.train_extras(config),
              on_epoch_end=lambda e, m, o, _loss: states.__setitem__(e, families.model_state(m)))  # fmt: skip
    return config, train_data, test_data, orders, states


@pytest.mark.parametrize("protocol", ["scratch", "paper", "paired"])
def test_vit_protocols_equal_sequential_retrains(vit_setup, protocol):
    config, train_data, test, orders, states = vit_setup
    ctx = retrains.RetrainContext(
        config, train_data, test, CFG, orders, start_states=[] if protocol == "scratch" else [states[3], states[4]],
        eval_epochs=(3, 4) if protocol == "scratch" else (CFG.epochs,),
    )  # fmt: skip
    with single_thread():
        base = torch.stack([evaluate(families.from_state(config, states[e]), test, CROSS_ENTROPY)[0] for e in (3, 4)])
        got, diag = loo.loo_scores(protocol, ctx, base, workers=1)
        extras = families.train_extras(config)
        x, y = train_data.x, train_data.y
        if protocol == "scratch":
            assert diag["max_abs_full_retrain_minus_checkpoint_test_loss"] == 0.0  # retrains repeat the run
            full = reference_retrain(families.init(config), x, y, orders, None, "drop", (3, 4), test, extras)
            for j in range(12):
                ref = reference_retrain(families.init(config), x, y, orders, j, "drop", (3, 4), test, extras)
                assert torch.equal(got[:, j], ref - full), f"sample {j}"
            return
        for c, e in enumerate((3, 4)):
            start = lambda e=e: families.from_state(config, states[e])  # noqa: E731
            full = reference_retrain(start(), x, y, orders, None, "zero", (CFG.epochs,), test, extras)[0]
            for j in range(12):
                ref = reference_retrain(start(), x, y, orders, j, "zero", (CFG.epochs,), test, extras)[0]
                expected = ref - (base[c] if protocol == "paper" else full)
                assert torch.equal(got[c, j], expected), f"checkpoint {e}, sample {j}"


# ----------------------------------------------------------------------------- stacked retrains (the GPU path)


@pytest.mark.parametrize("protocol", loo.PROTOCOLS)
def test_stacked_retrains_equal_sequential_ones(ctx_factory, protocol):
    """Stacks of 5 (the last one partial) against one retrain at a time. In float32 the stack's other summation
    order is amplified by Adam's first steps (which normalise tiny gradients) to ~1e-5 of the losses; a wrong
    sample left out would be off by the size of τ itself (tests/test_stacking.py checks exactness in float64)."""
    make, _ = ctx_factory
    ctx = make(protocol)
    with single_thread():
        one, _ = loo.loo_scores(protocol, ctx, torch.zeros(2, 20), workers=1)
        stacked, _ = loo.loo_scores(protocol, ctx, torch.zeros(2, 20), workers=1, stack=5)
    torch.testing.assert_close(stacked, one, rtol=0, atol=1e-4)
    assert one.abs().max() > 0.05


def test_stacked_scratch_trains_alone_a_removal_that_empties_a_batch(ctx_factory):
    """11 samples in batches of 5, 5, 1: removing an epoch's last sample skips that step, so it is not stacked."""
    make, _ = ctx_factory
    full = make("scratch")
    train_data = Subset(full.train_data.x[:11], full.train_data.y[:11], full.train_data.idx[:11])
    ctx = dataclasses.replace(full, train_data=train_data, orders=batch_orders(11, CFG.epochs, BATCH_SEED))
    last = set(ctx.orders[:, -1].tolist())
    assert [retrains._removes_a_whole_batch(ctx, retrains.Retrain(j, zero_weight=False)) for j in range(11)] == [
        j in last for j in range(11)
    ]
    with single_thread():
        one, _ = loo.loo_scores("scratch", ctx, torch.zeros(2, 20), workers=1)
        stacked, _ = loo.loo_scores("scratch", ctx, torch.zeros(2, 20), workers=1, stack=4)
    # float32 with two summation orders: the gap depends on the CPU's kernels, so it is bounded relative to the
    # effect under test (the LOO scores) rather than absolutely; tests/test_stacking.py checks 1e-10 in float64
    assert (stacked - one).abs().max() <= 0.02 * one.abs().max()
    jobs = [retrains.Retrain(j, zero_weight=False) for j in sorted(last)] + [retrains.Retrain(None, zero_weight=False)]
    with single_thread():
        alone = retrains.run_retrains(ctx, jobs, workers=1, desc="", stack=4)[:-1]
        for job, got in zip(jobs, alone, strict=False):  # trained alone: bit for bit the sequential retrain
            assert torch.equal(got, retrains.run_retrain(ctx, job))


def test_vit_retrains_are_never_stacked(vit_setup):
    """Dropout would draw one mask for a whole stack: `auto` gives 1 for the ViT, an explicit stack is refused."""
    from bayestda.runs.retrains import resolve_stack

    config, train_data, test, orders, _ = vit_setup
    assert resolve_stack("auto", config, "cuda") == resolve_stack(1, config, "cuda") == 1
    with pytest.raises(UserError, match=r"--stack 64: the vit family's retrains cannot be stacked: .*dropout"):
        resolve_stack(64, config, "cuda")
    assert resolve_stack("auto", {"arch": "cnn2", "task": "mnist3"}, "cuda") == 64
    assert resolve_stack("auto", {"arch": "cnn2", "task": "mnist3"}, "cpu") == 1
    assert resolve_stack("auto", {"family": "logreg", "arch": "logreg", "task": "mnist3"}, "cpu") == 64
    assert resolve_stack(3, {"family": "logreg", "arch": "logreg", "task": "mnist3"}, "cpu") == 3
    ctx = retrains.RetrainContext(config, train_data, test, CFG, orders, start_states=[], eval_epochs=(4,))
    with pytest.raises(ValueError, match="dropout"):
        retrains.run_stacked_retrains(ctx, [retrains.Retrain(None), retrains.Retrain(0)])


# ----------------------------------------------------------------------------- subset retrains (the LDS ground truth)


def test_restricted_orders_keep_the_full_runs_order():
    orders = batch_orders(12, 3, BATCH_SEED)
    members = (0, 3, 4, 8, 11)
    got = retrains.restrict_orders(orders, members)
    for e in range(3):
        assert got[e].tolist() == [p for p in orders[e].tolist() if p in members]


def test_subset_retrains_equal_training_on_the_subset(ctx_factory):
    """A subset retrain is the plain loop on the seed's order restricted to the subset (bit for bit), and a stack of
    them equals the retrains one at a time up to float32 rounding."""
    make, _ = ctx_factory
    ctx = make("scratch")
    subsets = [(0, 1, 2, 5, 7, 9), (2, 3, 4, 6, 10, 11), (0, 4, 5, 6, 8, 11)]
    jobs = [retrains.Retrain(None, members=s) for s in subsets]
    with single_thread():
        one = retrains.run_retrains(ctx, jobs, workers=1, desc="")
        stacked = retrains.run_retrains(ctx, jobs, workers=1, desc="", stack=3)
        x, y = ctx.train_data.x, ctx.train_data.y
        for members, got in zip(subsets, one, strict=True):
            orders = torch.tensor([[p for p in row if p in members] for row in ctx.orders.tolist()])
            ref = reference_retrain(init_model("cnn2", "mnist3", INIT_SEED), x, y, orders, None, "drop", (3, 4),
                                    ctx.test_data)  # fmt: skip
            assert torch.equal(got, ref)
    for a, b in zip(one, stacked, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
    assert (one[0] - one[1]).abs().max() > 0.05  # other subsets, other models
    with pytest.raises(ValueError, match="one size"):
        retrains.run_stacked_retrains(ctx, [jobs[0], retrains.Retrain(None, members=(0, 1))])
