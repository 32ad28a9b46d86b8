"""TracIn (both kinds) against a slow loop that retrains the seed itself and takes per-pair dot products of flat
gradients; the replay's check against the stored checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import single_thread, with_last_checkpoint_moved
from torch.nn import functional as F

from bayestda.core.errors import UserError
from bayestda.core.paths import read_seeds
from bayestda.data.subsets import Subset
from bayestda.methods import tracin
from bayestda.models import families
from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
from bayestda.runs.samples import load_seed_samples
from bayestda.training.loop import TrainExtras, batch_orders
from bayestda.training.recipe import RecipeOptions

EPOCHS, SEED = 3, read_seeds()[0]


RECIPES = {"cnn2": RecipeOptions(epochs=EPOCHS), "logreg": RecipeOptions(epochs=EPOCHS),
           "logreg-sgd": RecipeOptions(epochs=EPOCHS, optimizer="sgd", lr=0.05, momentum=0.9)}  # fmt: skip


@pytest.fixture(scope="module", params=list(RECIPES))
def samples(request, tmp_path_factory, data_root):
    """One seed trained for 3 epochs on MNIST3 20pc (60 images: batches of 32 and 28), scored on 12 test images: the
    CNN and logreg with the paper's Adam, and logreg with SGD and momentum."""
    out = tmp_path_factory.mktemp(request.param)
    spec = EnsembleSpec("mnist3", 20, request.param.split("-")[0], recipe=RECIPES[request.param])
    with single_thread():
        train_ensemble(spec, [SEED], data_root, out, torch.device("cpu"))
    loaded = load_seed_samples(spec.model, "mnist3", 20, SEED, out, data_root)
    test = loaded.test
    return dataclasses.replace(loaded, test=Subset(test.x[:12], test.y[:12], test.idx[:12]))


def _flat_grad(model, params, x, y) -> torch.Tensor:
    loss = F.cross_entropy(model(x[None]), y[None])
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def reference_tracin(samples, kind: str) -> torch.Tensor:
    """Retrain from the seed's initialisation with its batch order and a plain Adam (or SGD) loop; at every epoch end
    (cp) or before every step (ideal), add lr·(∇ℓ_j·∇L(z)) (ideal: lr/B) pair by pair."""
    config = samples.configs[-1]
    model = families.init(config)
    params = [p for p in model.parameters() if p.requires_grad]
    if config["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"])
    x, y, test = samples.train.x, samples.train.y, samples.test
    tau = torch.zeros(len(y), len(test.y), dtype=torch.float64)

    def add(rows, weight):
        model.eval()
        g_test = [_flat_grad(model, params, test.x[b], test.y[b]) for b in range(len(test.y))]
        for j in rows.tolist():
            g_j = _flat_grad(model, params, x[j], y[j])
            for b, g in enumerate(g_test):
                tau[j, b] += weight * torch.dot(g_j.double(), g.double()).item()
        model.train()

    orders = batch_orders(len(y), config["epochs"], config["batch_seed"])
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        for batch in orders[epoch - 1].split(config["batch_size"]):
            if kind == "ideal":
                add(batch, config["lr"] / len(batch))
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
        if kind == "cp":
            add(torch.arange(len(y)), config["lr"])
    return tau


@pytest.mark.parametrize("kind", tracin.KINDS)
def test_tracin_equals_the_slow_replay_loop(samples, kind):
    opts = tracin.TracInOptions(kind=kind, chunk=16)
    with single_thread():
        got, (diagnostics,) = tracin.score(samples, opts, torch.device("cpu"))
        want = reference_tracin(samples, kind)
    assert got.shape == (1, len(samples.train.y), len(samples.test.y))
    assert diagnostics["max_rel_weight_diff"] == 0.0  # the replay retraces the stored run bit for bit
    torch.testing.assert_close(got[0].double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    assert want.abs().max() > 0


def test_a_replay_that_misses_the_stored_run_is_refused(samples):
    doctored = with_last_checkpoint_moved(samples)
    with pytest.raises(UserError, match=rf"does not reproduce its checkpoint of epoch {EPOCHS} .*retrain it with: "):
        tracin.score(doctored, tracin.TracInOptions(chunk=16), torch.device("cpu"))


def test_ideal_refuses_a_family_that_augments_or_drops_out(samples, monkeypatch):
    monkeypatch.setattr(families, "train_extras", lambda config: TrainExtras(rng_seed=1))
    with pytest.raises(
        UserError, match=r"tracin-ideal needs each step.s gradients .*dropout or random augmentation.* use tracin-cp"
    ):
        tracin.score(samples, tracin.TracInOptions(kind="ideal", chunk=16), torch.device("cpu"))
