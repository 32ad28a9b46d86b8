"""The `logreg` family: every method runs on it through the runner, and its exact IF solvers agree."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from bayestda.core.paths import read_seeds, score_file
from bayestda.methods import registry
from bayestda.methods.runner import run_method
from bayestda.models import families
from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
from bayestda.training.recipe import RecipeOptions

SEEDS = read_seeds()[:2]


@pytest.fixture(scope="module")
def scored(tmp_path_factory, data_root):
    """Two logreg seeds at MNIST3-10pc, 4 epochs, scored by every registered method with its defaults."""
    out = tmp_path_factory.mktemp("logreg")
    train_ensemble(EnsembleSpec("mnist3", 10, "logreg", recipe=RecipeOptions(epochs=4)), SEEDS, data_root, out, "cpu")
    for name in registry.score_names():
        opts = registry.get(name).default_options(name)
        if hasattr(opts, "workers"):
            opts = dataclasses.replace(opts, workers=1)
        run_method(name, "logreg", "mnist3", 10, SEEDS, out, data_root, "cpu", opts)
    return out


def load(out, name, seed=SEEDS[0]):
    return torch.load(score_file(out, "logreg", name, "mnist3", 10, seed), weights_only=True)


@pytest.mark.parametrize("name", registry.score_names())
def test_every_method_scores_logreg(scored, name):
    record = load(scored, name)
    samples = 1 if registry.get(name).one_per_seed else 4  # TracIn: one τ per seed, of the whole run
    assert record["scores"].shape == (samples, 30, 900) and torch.isfinite(record["scores"]).all()
    assert record["config"]["checkpoint_config"]["family"] == "logreg"


def test_exact_if_solvers_agree_on_a_linear_model(scored):
    """For a linear model the Gauss–Newton matrix is the Hessian, so IF-ggn (Woodbury) and IF-cg (CG on true
    HVPs) solve the same system at the family's damping (the weight decay, under which CG converges)."""
    ggn, cg = load(scored, "if-ggn"), load(scored, "if-cg")
    assert ggn["config"]["options"]["damping"] == cg["config"]["options"]["damping"] == 5e-3
    assert all(d["converged"] for d in cg["config"]["diagnostics"])
    assert min(lo for lo, _ in (d["hessian_ritz_min_max"] for d in cg["config"]["diagnostics"])) > -1e-6  # PSD
    torch.testing.assert_close(cg["scores"], ggn["scores"], rtol=1e-4, atol=1e-4 * ggn["scores"].abs().max().item())


def test_logreg_stacks_its_retrains_on_a_cpu(scored, data_root, tmp_path):
    """auto: 64 on a CPU for logreg; the stack equals one retrain at a time up to float32 rounding, which is small
    next to the scores."""
    assert families.get("logreg").auto_stack["cpu"] == 64
    stacked = load(scored, "loo-scratch")
    assert stacked["config"]["diagnostics"][0]["stack"] == 64
    assert stacked["config"]["diagnostics"][0]["retrain_threads"] == stacked["config"]["threads"]  # the process's
    shutil.copytree(scored / "models", tmp_path / "models")
    opts = dataclasses.replace(registry.get("loo").default_options("loo-scratch"), workers=1, stack=1)
    run_method("loo-scratch", "logreg", "mnist3", 10, SEEDS[:1], tmp_path, data_root, "cpu", opts)
    alone = load(tmp_path, "loo-scratch")
    assert alone["config"]["diagnostics"][0]["stack"] == 1
    assert alone["config"]["diagnostics"][0]["retrain_threads"] == 1  # each retrain single-threaded on a CPU
    scale = alone["scores"].abs().max().item()
    torch.testing.assert_close(stacked["scores"], alone["scores"], rtol=0, atol=1e-3 * scale)
