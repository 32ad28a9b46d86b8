"""Pinned scores: every per-checkpoint method on a tiny float64 CNN and fixed random data, against the values
the code gave before the method registry existed. float64 keeps them machine-independent to ~1e-12, so a change
of maths (not of float32 rounding) fails here. The full bit-for-bit check of real runs is in the commit history
(MNIST3-10pc digests)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bayestda.core.seeds import seeded_init
from bayestda.data.subsets import Subset
from bayestda.methods import registry
from bayestda.models import families
from bayestda.models.cnn import build
from bayestda.models.func import FunctionalModel

# (sum, sum of |τ|, τ[0, 0], τ[-1, -1]) of the [12, 5] scores
PINNED = {
    "gd": [39.893745434306894, 62.466887670417826, -0.37435344435176104, -0.12783283036976578],
    "gc": [14.473782050849964, 22.52185828033944, -0.13678821753462828, -0.0455279026671947],
    "ats": [-5.14869415553673, 9.636020206815846, 0.048203623345908664, 0.001088845480377465],
    "if-paper": [-0.01190764003235141, 0.01864607499709625, 0.00011174664522796268, 3.816393943109076e-05],
    "if-ggn": [-136.7519294378987, 217.3164788746903, 0.975005894370029, 0.8689645403261461],
    "if-ekfac": [-515.4150975612699, 732.1524088913777, 3.318967373826931, -1.6966508893498027],
    "if-cg": [-0.7906999817068348, 1.2437984923203504, 0.007505793724806276, 0.002553057962501618],
}
OPTIONS = {"ats": {"loss_dtype": "float64"}, "if-paper": {"diagnostics": False}, "if-cg": {"tol": 1e-10}}


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = seeded_init(7, lambda: build({"arch": "cnn2", "task": "mnist3"})).double().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(17, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (17,), generator=gen)
    yield model, Subset(x[:12], y[:12], torch.arange(12)), Subset(x[12:], y[12:], torch.arange(5))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(PINNED))
def test_scores_match_the_pinned_values(setup, name):
    model, train, test = setup
    method = registry.get(name)
    opts = dataclasses.replace(method.default_options(name), **OPTIONS.get(name, {}))
    opts = method.resolve(opts, families.get("cnn"), "cpu")
    fm = FunctionalModel(model, chunk=opts.chunk, hvp_chunk=getattr(opts, "hvp_chunk", 25))
    scores, _ = method.score(fm, train, test, opts, {"epochs": 15, "lr": 1e-3, "weight_decay": 5e-3})
    scores = scores.double()
    got = [scores.sum().item(), scores.abs().sum().item(), scores[0, 0].item(), scores[-1, -1].item()]
    assert got == pytest.approx(PINNED[name], rel=1e-9, abs=1e-15)
