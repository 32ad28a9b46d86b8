"""The training recipe: its layers of defaults, its checks, the optimizer it builds, what a run records, and runs
recorded before its optimizer fields existed."""

from __future__ import annotations

import json

import pytest
import torch

from bayestda.artifacts.checkpoints import seed_is_complete
from bayestda.core.errors import UserError
from bayestda.core.io import atomic_write_json
from bayestda.core.paths import metrics_file, seed_model_dir
from bayestda.data.subsets import load_subset
from bayestda.runs.ensemble import EnsembleSpec, run_config, train_ensemble
from bayestda.training.recipe import RecipeOptions, TrainConfig, make_optimizer, normalise, resolve


def test_flags_beat_the_family_which_beats_the_task_which_beats_the_paper():
    task = {"lr": 0.5, "batch_size": 16}
    family = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}
    assert resolve({}, 15, {}, RecipeOptions()) == TrainConfig(epochs=15)  # the paper's Adam
    got = resolve(task, 15, family, RecipeOptions(lr=0.02, nesterov="on", epochs=3))
    assert got == TrainConfig(epochs=3, lr=0.02, batch_size=16, optimizer="sgd", momentum=0.9, nesterov=True)
    assert RecipeOptions(lr=0.02, nesterov="on").argv() == ["--lr", "0.02", "--nesterov", "on"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "rmsprop"}, "--optimizer 'rmsprop': choose one of adam, sgd"),
        ({"momentum": 0.9}, "--momentum and --nesterov are for --optimizer sgd, not adam"),
        ({"optimizer": "sgd", "nesterov": True}, "--nesterov on needs --momentum above 0"),
        ({"lr": 0.0}, "lr > 0"),
        ({"dropout": 1.0}, "dropout in [0, 1)"),
        ({"batch_size": 0}, "batch size and epochs must be at least 1"),
    ],
)
def test_a_recipe_that_cannot_be_trained_is_one_line(fields, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(epochs=2, **fields)


def test_the_optimizer_is_the_recipe_s():
    model = torch.nn.Linear(3, 2)
    adam = make_optimizer(model, TrainConfig(epochs=1))
    sgd = make_optimizer(model, TrainConfig(epochs=1, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True))
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 5e-3
    assert type(sgd) is torch.optim.SGD
    assert {k: sgd.param_groups[0][k] for k in ("lr", "momentum", "nesterov", "dampening")} == {
        "lr": 0.1, "momentum": 0.9, "nesterov": True, "dampening": 0,
    }  # fmt: skip


def test_a_run_records_its_recipe_and_one_recorded_before_the_optimizer_fields_is_the_same_adam_run(
    data_root, tmp_path
):
    spec = EnsembleSpec("mnist3", 10, "logreg", recipe=RecipeOptions(epochs=1))
    train_ensemble(spec, [0], data_root, tmp_path, "cpu")
    seed_dir = seed_model_dir(tmp_path, "logreg", "mnist3", 10, 0)
    metrics = json.loads(metrics_file(seed_dir).read_text())
    assert TrainConfig.from_config(metrics["config"]) == TrainConfig(epochs=1)
    assert {"optimizer", "momentum", "nesterov", "dropout"} <= metrics["config"].keys()
    train = load_subset("mnist3", "train", 10, data_root, tmp_path)
    config = run_config(spec, 0, train)
    # as the package wrote it before the recipe had an optimizer: the same Adam run, not "other settings"
    new_fields = ("optimizer", "momentum", "nesterov", "dropout")
    old = {k: v for k, v in metrics["config"].items() if k not in new_fields}
    atomic_write_json({**metrics, "config": old}, metrics_file(seed_dir))
    for path in seed_dir.glob("ckpt_epoch_*.pt"):
        ckpt = torch.load(path, weights_only=True)
        torch.save({**ckpt, "config": {k: v for k, v in ckpt["config"].items() if k not in new_fields}}, path)
    assert normalise(old) == normalise(config) and seed_is_complete(seed_dir, config)
    with pytest.raises(UserError, match="trained with other settings \\(lr, optimizer differ\\)"):
        other = run_config(EnsembleSpec("mnist3", 10, "logreg", recipe=RecipeOptions(epochs=1, optimizer="sgd",
                                                                                     lr=0.1)), 0, train)  # fmt: skip
        seed_is_complete(seed_dir, other)
