"""The label-noise variant and mislabel detection (`label_noise.py`, `mislabel.py`): the recorded flips are exactly
the ones trained on, self-influence against a per-sample autograd loop, the AUC against sklearn and dattri, and the
refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import single_thread
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from bayestda.analysis import mislabel
from bayestda.core.errors import UserError
from bayestda.core.paths import REPO_ROOT, self_influence_file
from bayestda.data import label_noise
from bayestda.data.subsets import load_subset
from bayestda.models import families
from bayestda.runs import retrains
from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
from bayestda.runs.samples import load_seed_samples
from bayestda.training.loop import evaluate
from bayestda.training.losses import CROSS_ENTROPY
from bayestda.training.posterior import label_noise_of, model_name, parse_model_name
from bayestda.training.recipe import RecipeOptions

SEEDS = [0, 1]


def test_flips_are_a_fixed_share_each_to_another_class_of_the_task():
    y = torch.tensor([0, 1, 2] * 50)
    noisy, flipped = label_noise.flip_labels(y, (0, 1, 2), 0.1)
    assert len(flipped) == 15 and torch.equal(flipped, flipped.sort().values)
    assert (noisy[flipped] != y[flipped]).all() and torch.isin(noisy, torch.tensor([0, 1, 2])).all()
    keep = torch.ones(150, dtype=torch.bool)
    keep[flipped] = False
    assert torch.equal(noisy[keep], y[keep])
    again, same = label_noise.flip_labels(y, (0, 1, 2), 0.1)
    assert torch.equal(again, noisy) and torch.equal(same, flipped)
    # over many flips, each other class is drawn about equally often
    big = torch.tensor([0, 1, 2] * 2000)
    new, where = label_noise.flip_labels(big, (0, 1, 2), 0.5)
    counts = torch.bincount((new[where] - big[where]) % 3, minlength=3)
    assert counts[0] == 0 and abs(int(counts[1]) - int(counts[2])) < 0.1 * len(where)
    with pytest.raises(UserError, match="flips 0 of the 150"):
        label_noise.flip_labels(y, (0, 1, 2), 0.001)


def test_model_names_carry_the_noise_and_the_posterior():
    assert model_name("cnn", "de", 0.1) == "cnn-noisy10" and model_name("cnn3", "de-init", 0.2) == "cnn3-deinit-noisy20"
    assert parse_model_name("cnn-debatch-noisy10") == ("cnn", "de-batch") and label_noise_of("cnn-noisy10") == 0.1
    assert label_noise_of("cnn-deinit") == 0.0
    argv = families.of_model("cnn3-noisy10").train_argv("cnn3-noisy10", "mnist3", 50)
    assert argv[-4:] == ["--posterior", "de", "--label_noise", "0.1"]
    with pytest.raises(UserError, match="unknown posterior suffix"):
        families.of_model("cnn-noisy")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("noisy")
    with single_thread():
        train_ensemble(
            EnsembleSpec("mnist3", 10, recipe=RecipeOptions(epochs=2), label_noise=0.1), SEEDS, data_root, out, "cpu"
        )
        mislabel.run_self_influence(["gd", "loo-scratch"], "cnn-noisy10", "mnist3", 10, SEEDS, out, data_root, "cpu")
    return out


def test_the_recorded_flips_are_the_labels_trained_on_and_scored(noisy_run, data_root):
    clean = load_subset("mnist3", "train", 10, data_root, REPO_ROOT)
    samples = load_seed_samples("cnn-noisy10", "mnist3", 10, 0, noisy_run, data_root)
    record = samples.configs[0]["label_noise"]
    differ = (samples.train.y != clean.y).nonzero().view(-1).tolist()
    assert differ == record["flipped"] == label_noise.flip_labels(clean.y, (0, 1, 2), 0.1)[1].tolist()
    assert samples.train.y[differ].tolist() == record["labels"] and len(differ) == 3
    # the run trained on those labels: a replay on them reproduces the checkpoints, a replay on the clean ones does not
    rec = torch.load(self_influence_file(noisy_run, "cnn-noisy10", "loo-scratch", "mnist3", 10, 0),
                     weights_only=True)  # fmt: skip
    assert rec["config"]["diagnostics"][0]["max_abs_full_retrain_minus_checkpoint_test_loss"] < 1e-5
    ctx = retrains.retrain_context(dataclasses.replace(samples, train=clean), "cpu")
    with single_thread():
        replay = retrains.run_retrains(ctx, [retrains.Retrain(None, zero_weight=False)], 1, "")[0][-1]
        last = evaluate(list(samples.models())[-1], samples.test, CROSS_ENTROPY)[0]
    assert (replay - last).abs().max() > 1e-3


def test_a_doctored_flip_record_is_refused(noisy_run, data_root):
    samples = load_seed_samples("cnn-noisy10", "mnist3", 10, 0, noisy_run, data_root)
    config = {**samples.configs[0], "label_noise": {**samples.configs[0]["label_noise"], "flipped": [1, 2, 3]}}
    clean = load_subset("mnist3", "train", 10, data_root, REPO_ROOT)
    with pytest.raises(UserError, match="a fresh draw does not reproduce"):
        label_noise.apply_recorded(clean, config, (0, 1, 2), "run")


def test_gd_self_influence_is_the_squared_gradient_norm(noisy_run, data_root):
    """The slow reference: per training point, autograd's gradient of its own loss, squared."""
    samples = load_seed_samples("cnn-noisy10", "mnist3", 10, 1, noisy_run, data_root)
    got = torch.load(self_influence_file(noisy_run, "cnn-noisy10", "gd", "mnist3", 10, 1), weights_only=True)
    for c, model in enumerate(samples.models()):
        model = model.double()
        for j in (0, 7, 22):
            loss = F.cross_entropy(model(samples.train.x[j : j + 1].double()), samples.train.y[j : j + 1])
            grads = torch.autograd.grad(loss, [p for p in model.parameters()])
            assert got["self"][c, j].item() == pytest.approx(sum((g**2).sum() for g in grads).item(), rel=1e-4)


def test_auc_equals_sklearn_and_dattri():
    rng = np.random.default_rng(0)
    flipped = rng.random(200) < 0.1
    score = rng.normal(size=200) + 1.5 * flipped
    ours = mislabel.auc(score, flipped)
    assert ours == pytest.approx(roc_auc_score(flipped, score), abs=1e-12)
    tied = np.round(score)  # ties count one half, as sklearn's
    assert mislabel.auc(tied, flipped) == pytest.approx(roc_auc_score(flipped, tied), abs=1e-12)
    metrics = pytest.importorskip("dattri.metric", reason="dattri (test-only reference, req-test.txt) not installed")
    theirs, _ = metrics.mislabel_detection_auc(torch.as_tensor(score), torch.as_tensor(flipped))
    assert ours == pytest.approx(float(theirs), abs=1e-6)


def test_rankings_mean_single_sample_and_z():
    rng = np.random.default_rng(1)
    flipped = np.zeros(40, dtype=bool)
    flipped[:4] = True
    aligned = rng.normal(size=(5, 3, 40)) + 3 * flipped
    ranks = mislabel.rankings(aligned)
    flat = aligned.reshape(15, 40)
    np.testing.assert_allclose(ranks["mean"], flat.mean(0))
    np.testing.assert_allclose(ranks["z"], flat.mean(0) / flat.std(0, ddof=1))
    np.testing.assert_array_equal(ranks["single"], aligned[0, -1])
    table = mislabel.auc_table({"m": aligned}, flipped).iloc[0]
    assert table["auc_mean"] == 1.0 and table["samples"] == 15 and table["precision_at_flips_mean"] == 1.0
    assert table["auc_mean_low"] == table["auc_mean_high"] == 1.0  # perfect separation in every resample
    noisy = rng.normal(size=40)
    low, high = mislabel.auc_interval(noisy, flipped)
    assert low < mislabel.auc(noisy, flipped) < high and high - low > 0.3  # 4 flips: a wide interval


def test_the_step_reads_the_files_and_refuses_a_clean_run(noisy_run, tmp_path, data_root):
    out = mislabel.write_mislabel("cnn-noisy10", "mnist3", 10, ["gd", "loo-scratch"], SEEDS, noisy_run)
    table = np.genfromtxt(out / "auc.csv", delimiter=",", names=True, dtype=None, encoding=None)
    assert list(table["method"]) == ["gd", "loo-scratch"] and (out / "figures/roc.png").is_file()
    assert "Mislabel detection, 3 flipped of 30 training labels, 2 seeds" in mislabel.console_summary(out)
    assert mislabel.write_mislabel("cnn-noisy10", "mnist3", 10, ["gd", "loo-scratch"], SEEDS, noisy_run) is None
    with pytest.raises(UserError, match="holds results of methods gd,loo-scratch on seeds 0,1; pass those"):
        mislabel.write_mislabel("cnn-noisy10", "mnist3", 10, ["gd"], SEEDS, noisy_run)  # fewer methods
    assert mislabel.write_mislabel("cnn-noisy10", "mnist3", 10, ["gd"], SEEDS, noisy_run, overwrite=True) == out
    with pytest.raises(UserError, match=r"no self-influence of trak for seeds 0, 1 .* python self_influence.py"):
        mislabel.write_mislabel("cnn-noisy10", "mnist3", 10, ["gd", "trak"], SEEDS, noisy_run)
    with single_thread():
        train_ensemble(EnsembleSpec("mnist3", 10, recipe=RecipeOptions(epochs=1)), SEEDS, data_root, tmp_path, "cpu")
        mislabel.run_self_influence(["gd"], "cnn", "mnist3", 10, SEEDS, tmp_path, data_root, "cpu")
    with pytest.raises(UserError, match="trained on clean labels, so there is nothing to detect"):
        mislabel.write_mislabel("cnn", "mnist3", 10, ["gd"], SEEDS, tmp_path)
