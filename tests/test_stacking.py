"""ModelStack: M models trained as one by the shared loop equal M separate runs (float64, to rounding)."""

import pytest
import torch
from helpers import init_model

from bayestda.core.paths import REPO_ROOT
from bayestda.data.subsets import Subset, load_subset
from bayestda.training.loop import batch_orders, evaluate, train
from bayestda.training.losses import CROSS_ENTROPY
from bayestda.training.recipe import TrainConfig, make_optimizer
from bayestda.training.stacking import ModelStack

CFG = TrainConfig(epochs=3, batch_size=4)  # 11 samples: batches of 4, 4, 3
# SGD's momentum buffer and weight decay act elementwise too: one SGD over the stack is M independent ones
SGD = TrainConfig(epochs=3, batch_size=4, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True)


@pytest.fixture(scope="module")
def data(data_root):
    train_set = load_subset("mnist3", "train", 10, data_root, REPO_ROOT)
    test_set = load_subset("mnist3", "test", None, data_root, REPO_ROOT)
    as64 = lambda s, k: Subset(s.x[:k].double(), s.y[:k], s.idx[:k])  # noqa: E731
    return as64(train_set, 11), as64(test_set, 30)


def models(seeds):
    return [init_model("cnn2", "mnist3", s).double() for s in seeds]


def test_forward_is_each_models_forward(data):
    train_set, _ = data
    separate = models([0, 1, 2])
    stack = ModelStack(models([9])[0], [m.state_dict() for m in separate])
    out = stack(train_set.x)
    assert out.shape == (3, 11, 10)
    for m, model in enumerate(separate):
        torch.testing.assert_close(out[m], model(train_set.x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("mode", "cfg"), [("zeroed", CFG), ("removed", CFG), ("removed", SGD)],
                         ids=["zeroed-adam", "removed-adam", "removed-sgd"])  # fmt: skip
def test_training_a_stack_equals_training_each_model(data, mode, cfg):
    """Three models with their own starts, each leaving out another sample (or none), as LOO does; with the
    recipe's optimizer (Adam or SGD with Nesterov momentum)."""
    train_set, test_set = data
    orders = batch_orders(11, cfg.epochs, 5)
    leave_out = [None, 2, 7]
    separate, seen = models([0, 1, 2]), {}
    for m, (model, j) in enumerate(zip(separate, leave_out, strict=True)):
        weight = None
        if mode == "zeroed" and j is not None:
            weight = torch.ones(11, dtype=torch.float64)
            weight[j] = 0.0
        exclude = j if mode == "removed" else None
        train(model, make_optimizer(model, cfg), train_set, orders, cfg, sample_weight=weight, exclude=exclude,
              on_epoch_end=lambda e, mod, o, _l, m=m: seen.__setitem__((m, e), evaluate(mod, test_set, CROSS_ENTROPY)[0]))  # fmt: skip

    stack = ModelStack(models([9])[0], [m.state_dict() for m in models([0, 1, 2])])
    weight, exclude = None, None
    if mode == "zeroed":
        weight = torch.ones(3, 11, dtype=torch.float64)
        weight[1, 2] = weight[2, 7] = 0.0
    else:
        exclude = torch.tensor([-1, 2, 7])
    stacked = {}
    train(stack, make_optimizer(stack, cfg), train_set, orders, cfg, sample_weight=weight, exclude=exclude,
          on_epoch_end=lambda e, mod, o, _l: stacked.__setitem__(e, evaluate(mod, test_set, CROSS_ENTROPY)[0]))  # fmt: skip

    for m, model in enumerate(separate):
        state = stack.state(m)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(state[k], v, rtol=1e-10, atol=1e-12)
        for e in range(1, cfg.epochs + 1):
            torch.testing.assert_close(stacked[e][m], seen[(m, e)], rtol=1e-10, atol=1e-12)
    # the models did differ: the leave-outs changed the weights
    assert not torch.allclose(stack.state(1)["fc2.weight"], stack.state(2)["fc2.weight"])


def test_a_removal_that_empties_a_batch_is_refused(data):
    """The sequential loop skips such a step for one model; a stack cannot, so the caller trains it alone."""
    train_set, _ = data
    nine = Subset(train_set.x[:9], train_set.y[:9], train_set.idx[:9])  # batches of 4, 4, 1
    orders = batch_orders(9, 1, 5)
    stack = ModelStack(models([9])[0], [m.state_dict() for m in models([0, 1])])
    with pytest.raises(ValueError, match="empty after its exclusion"):
        train(stack, make_optimizer(stack, CFG), nine, orders, CFG, exclude=torch.tensor([-1, int(orders[0, -1])]))


def test_per_model_orders_equal_training_each_model_on_its_own_order(data):
    """A stack whose models each visit their own positions (LDS subset retrains): each model equals a separate run
    on its order, and the forward pass on per-model batches is each model's forward."""
    from bayestda.runs.retrains import restrict_orders

    train_set, test_set = data
    full = batch_orders(11, CFG.epochs, 5)
    members = [(0, 1, 2, 4, 6, 9), (1, 3, 5, 7, 8, 10), (0, 2, 3, 5, 8, 9)]
    orders = torch.stack([restrict_orders(full, m) for m in members])  # [3, epochs, 6]: batches of 4, 2
    separate, seen = models([0, 0, 0]), {}
    for m, model in enumerate(separate):
        train(model, make_optimizer(model, CFG), train_set, orders[m], CFG,
              on_epoch_end=lambda e, mod, o, _l, m=m: seen.__setitem__((m, e), evaluate(mod, test_set, CROSS_ENTROPY)[0]))  # fmt: skip
    stack = ModelStack(models([9])[0], [m.state_dict() for m in models([0, 0, 0])])
    x = train_set.x[orders[:, 0, :4]]  # one batch per model
    out = stack(x, per_model=True)
    for m, model in enumerate(models([0, 0, 0])):
        torch.testing.assert_close(out[m], model(x[m]), rtol=1e-12, atol=1e-12)
    stacked = {}
    train(stack, make_optimizer(stack, CFG), train_set, orders, CFG,
          on_epoch_end=lambda e, mod, o, _l: stacked.__setitem__(e, evaluate(mod, test_set, CROSS_ENTROPY)[0]))  # fmt: skip
    for m in range(3):
        for e in range(1, CFG.epochs + 1):
            torch.testing.assert_close(stacked[e][m], seen[(m, e)], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(stacked[CFG.epochs][0], stacked[CFG.epochs][1])  # the subsets made them differ
    with pytest.raises(ValueError, match="per-model orders take no"):
        train(stack, make_optimizer(stack, CFG), train_set, orders, CFG, exclude=torch.tensor([-1, 2, 7]))
