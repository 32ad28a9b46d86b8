"""The method registry is the one extension point: a method declared here, in this test module and in no other
file, runs through step 2's runner, step 3, step 4 and the experiment graph like a built-in one."""

from __future__ import annotations

import runpy
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from bayestda.core.errors import UserError
from bayestda.core.options import option
from bayestda.core.paths import REPO_ROOT, read_seeds, results_dir, score_file
from bayestda.methods import registry
from bayestda.methods.runner import run_method
from bayestda.models import families
from bayestda.pipeline.graph import ExperimentSpec, build_graph, resolve_methods
from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
from bayestda.training.recipe import RecipeOptions


@dataclass(frozen=True)
class LogitOptions(registry.MemoryOptions):
    scale: float = option(1.0, "multiplies every score", positive=True)
    centre: str = option("none", "subtract the mean logit first", choices=("none", "mean"))


def logit_similarity(fm, train, test, opts: LogitOptions, run_config):
    """τ = scale · f(x_j)·f(x): a toy per-checkpoint method, simple enough to recompute here."""
    with torch.no_grad():
        a, b = fm.logits(fm.params, train.x), fm.logits(fm.params, test.x)
    if opts.centre == "mean":
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return opts.scale * a @ b.T, {"checked": True}


@pytest.fixture
def logit_method():
    method = registry.register(
        registry.Method(name="logitsim", label="LogitSim", helps_sign=-1, options=LogitOptions,
                        score=logit_similarity, variant="centre")
    )  # fmt: skip
    yield method
    registry.all_methods().pop("logitsim")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """Two logreg seeds, 3 epochs: their last 3 checkpoints are the posterior samples."""
    out = tmp_path_factory.mktemp("registry")
    train_ensemble(
        EnsembleSpec("mnist3", 10, "logreg", recipe=RecipeOptions(epochs=3)), read_seeds()[:2], data_root, out, "cpu"
    )
    return out


def run_step(script: str, *argv: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(REPO_ROOT / script), run_name="__main__")


def test_a_method_registered_here_runs_through_the_runner_and_steps_3_and_4(
    logit_method, trained, data_root, monkeypatch
):
    assert "logitsim-mean" in registry.score_names() and registry.label("logitsim-mean") == "LogitSim (mean)"
    seeds = read_seeds()[:2]
    opts = LogitOptions(scale=2.0, centre="mean")
    written = run_method("logitsim-mean", "logreg", "mnist3", 10, seeds, trained, data_root, "cpu", opts)
    assert all(written.values())

    record = torch.load(score_file(trained, "logreg", "logitsim-mean", "mnist3", 10, seeds[0]), weights_only=True)
    assert record["sign"] == -1 and record["method"] == "logitsim-mean"
    assert record["config"]["options"] == {"chunk": families.get("logreg").chunk, "scale": 2.0, "centre": "mean"}
    assert record["config"]["diagnostics"] == [{"checked": True}] * 3
    # the slow reference: each checkpoint loaded by hand, the scores recomputed
    from bayestda.artifacts.checkpoints import load_checkpoint
    from bayestda.core.paths import checkpoint_file, seed_model_dir
    from bayestda.data.subsets import load_subset

    train = load_subset("mnist3", "train", 10, data_root, trained)
    test = load_subset("mnist3", "test", None, data_root, trained)
    for i, epoch in enumerate(record["ckpt_epochs"]):
        model, _ = load_checkpoint(checkpoint_file(seed_model_dir(trained, "logreg", "mnist3", 10, seeds[0]), epoch))
        with torch.no_grad():
            a, b = model(train.x), model(test.x)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        torch.testing.assert_close(record["scores"][i], 2.0 * a @ b.T, rtol=1e-5, atol=1e-5)

    methods = "logitsim-mean,gd"
    run_method("gd", "logreg", "mnist3", 10, seeds, trained, data_root, "cpu")
    flags = ["--model", "logreg", "--task", "mnist3", "--num_per_class", "10", "--methods", methods,
             "--seed_ids", "0", "1", "--out_root", str(trained)]  # fmt: skip
    run_step("compute_pvalues.py", *flags, monkeypatch=monkeypatch)
    run_step("compute_correlations.py", *flags, monkeypatch=monkeypatch)
    res = results_dir(trained, "logreg", "mnist3", 10)
    mean_p = pd.read_csv(res / "mean_p_values.csv", index_col=0)
    assert mean_p.columns.tolist() == ["logitsim-mean", "gd"] and mean_p.index.tolist() == [1, 2, 3]
    mu = pd.read_csv(res / "mu" / "logitsim-mean_k3.csv", index_col=0).to_numpy()
    scores = [torch.load(score_file(trained, "logreg", "logitsim-mean", "mnist3", 10, s))["scores"] for s in seeds]
    np.testing.assert_allclose(mu, np.mean([s.double().mean(0).numpy() for s in scores], 0), rtol=1e-6, atol=1e-9)
    aligned = pd.read_csv(res / "correlations" / "pearson_mu_aligned.csv", index_col=0)
    raw = pd.read_csv(res / "correlations" / "pearson_mu_raw.csv", index_col=0)
    assert aligned.loc["logitsim-mean", "gd"] == pytest.approx(-raw.loc["logitsim-mean", "gd"])  # its sign, −1
    assert (res / "figures" / "mu_sigma_logitsim-mean_k3.png").is_file()


def test_a_registered_method_is_in_the_experiment_graph_with_its_script(logit_method, tmp_path):
    assert resolve_methods(["logitsim", "gd"]) == ("logitsim-none", "gd")
    assert resolve_methods(["logitsim"], {"centre": "mean"}) == ("logitsim-mean",)
    spec = ExperimentSpec("logreg", "mnist3", 10, ("logitsim-mean",), (0,), tmp_path)
    task = {t.name: t for t in build_graph(spec)}["logitsim-mean_seed0"]
    # no tda_cnn_scripts/logitsim.py: the generic step-2 script, told the method
    assert task.argv[:11] == ["tda_cnn_scripts/score.py", "--model", "logreg", "--task", "mnist3", "--num_per_class",
                              "10", "--method", "logitsim", "--centre", "mean"]  # fmt: skip


def test_unknown_methods_and_variants_are_one_line_errors():
    with pytest.raises(UserError, match="unknown method 'datamodels'"):
        registry.get("datamodels")
    with pytest.raises(UserError, match="unknown method 'tracin-sgd'"):
        registry.get("tracin-sgd")
    with pytest.raises(UserError, match="unknown method 'if-lissa'"):
        registry.get("if-lissa")


def test_the_paper_methods_and_signs_are_declared_once():
    assert registry.PAPER_METHODS == ("loo-paper", "ats", "if-paper", "gd", "gc")
    assert {m: registry.helps_sign(m) for m in registry.score_names()} == {
        "loo-paper": 1, "loo-paired": 1, "loo-scratch": 1, "ats": -1, "if-paper": -1, "if-ggn": -1, "if-cg": -1,
        "if-ekfac": -1, "gd": 1, "gc": 1, "trak": 1, "tracin-cp": 1, "tracin-ideal": 1, "ud": 1,
    }  # fmt: skip
    assert [m.name for m in registry.all_methods().values() if m.per_seed] == ["loo", "tracin", "ud"]
    assert [m.name for m in registry.all_methods().values() if m.one_per_seed] == ["tracin"]


def test_ground_truths_are_declared_per_variant():
    """LOO's scratch and paired protocols are ground truths (scratch first); the paper's LOO is measured by
    retraining too, but mixes z_j's removal with more training, so it is none."""
    assert registry.ground_truths() == ["loo-scratch", "loo-paired"]
    assert registry.ground_truths(["ats", "loo-paper", "loo-paired", "gd"]) == ["loo-paired"]
    assert not registry.is_ground_truth("loo-paper") and registry.get("loo-paper").retrained
    assert not registry.is_ground_truth("if-ggn")
