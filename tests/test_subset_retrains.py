"""The LDS-retrain artifacts (`subset_retrains.py`): each is checked against the experiment it is used for, and a
file of other subsets is never silently reused. (That a retrain is the seed's recipe on the subset is tested in
tests/methods/test_loo.py; the step end to end in tests/pipeline/test_run_experiment.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_config

from bayestda.analysis.statistics import Experiment
from bayestda.core.errors import UserError
from bayestda.core.paths import subset_retrain_file
from bayestda.runs import subset_retrains as sr

SEEDS, N, M_TEST, EPOCHS = [0, 1, 2], 6, 4, [11, 12, 13, 14, 15]
OPTS = sr.SubsetRetrainOptions(lds_subsets=5, workers=1)


def write(out, at, opts=OPTS, train_idx=None, **changes):
    """Seed `at`'s artifact as the step writes it, with `changes` to its record."""
    members = sr.draw_subsets(N, opts.lds_subsets, opts.lds_alpha, opts.lds_subset_seed)
    record = {"losses": torch.rand(opts.lds_subsets, len(EPOCHS), M_TEST), "members": members,
              "train_idx": torch.as_tensor(np.arange(N) if train_idx is None else train_idx), "test_idx": torch.arange(M_TEST), "ckpt_epochs": EPOCHS,
              "seed": at, "config": {"subsets": opts.subset_config(), "checkpoint_config": run_config(seed=at)}}  # fmt: skip
    record.update(changes)
    path = subset_retrain_file(out, "cnn", "mnist3", 10, at)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    return path


def experiment(out) -> Experiment:
    return Experiment("cnn", "mnist3", 10, out, ["gd"], SEEDS, np.arange(N), np.arange(M_TEST), 5, {}, {}, {}, EPOCHS)


def test_every_seeds_retrains_load_checked(tmp_path):
    for s in SEEDS:
        write(tmp_path, s)
    got = sr.load_subset_retrains(experiment(tmp_path))
    assert got.losses.shape == (3, 5, 5, M_TEST) and got.losses.dtype == np.float64
    assert got.members.shape == (5, N) and (got.members.sum(1) == 3).all() and got.ckpt_epochs == EPOCHS


@pytest.mark.parametrize(
    "doctor, message",
    [
        (
            lambda out: subset_retrain_file(out, "cnn", "mnist3", 10, 2).unlink(),
            r"no LDS retrains for seeds 2 of cnn_mnist3_10pc; make them with: python retrain_subsets.py --model cnn "
            r"--task mnist3 --num_per_class 10 \(or per seed: --seed_id 2\)",
        ),
        (
            lambda out: write(out, 2, sr.SubsetRetrainOptions(lds_subsets=5, lds_subset_seed=1)),
            r"retrained other subsets \(M=5, alpha=0.5, subset seed 1, float32 losses\) than seed 0 .*"
            r"--seed_id 2 --overwrite",
        ),
        (lambda out: write(out, 2, train_idx=np.arange(N) + 1), "other train/test indices"),
        (lambda out: write(out, 2, ckpt_epochs=[1, 2, 3, 4, 5]), r"at epochs \[1, 2, 3, 4, 5\]"),
        (lambda out: write(out, 2, seed=1), "is not of cnn_mnist3_10pc seed 2"),
        (lambda out: write(out, 2, losses=torch.full((5, 5, M_TEST), float("nan"))), "NaN/inf test losses"),
        (lambda out: subset_retrain_file(out, "cnn", "mnist3", 10, 2).write_bytes(b"cut"), "cannot be read"),
    ],
)
def test_a_file_not_of_this_experiment_is_one_line_naming_the_command(tmp_path, doctor, message):
    for s in SEEDS:
        write(tmp_path, s)
    doctor(tmp_path)
    with pytest.raises(UserError, match=message) as err:
        sr.load_subset_retrains(experiment(tmp_path))
    assert "\n" not in str(err.value) and "retrain_subsets.py" in str(err.value)


def test_existing_retrains_are_skipped_and_other_subsets_refused(tmp_path):
    write(tmp_path, 0)
    args = ("cnn", "mnist3", 10, [0], tmp_path, tmp_path, "cpu")
    assert sr.run_subset_retrains(*args, OPTS) == {0: None}  # finished: skipped without loading anything
    assert sr.holds_retrains(subset_retrain_file(tmp_path, "cnn", "mnist3", 10, 0), OPTS)
    other = sr.SubsetRetrainOptions(lds_subsets=7, workers=1)
    assert not sr.holds_retrains(subset_retrain_file(tmp_path, "cnn", "mnist3", 10, 0), other)
    with pytest.raises(UserError, match=r"holds retrains with M=5, .* not M=7, .*; pass --overwrite"):
        sr.run_subset_retrains(*args, other)


def test_alpha_that_leaves_an_empty_or_full_subset_is_refused():
    with pytest.raises(UserError, match=r"--lds_alpha 0.01 gives subsets of 0 of the 30"):
        sr.draw_subsets(30, 5, 0.01, 0)
    with pytest.raises(UserError, match="gives subsets of 30 of the 30"):
        sr.draw_subsets(30, 5, 1.0, 0)
