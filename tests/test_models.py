"""The model families' architectures: shapes and parameter counts."""

import pytest
import torch
from helpers import build_model, num_parameters, one_line_error
from torch.nn import functional as F

from bayestda.core.errors import UserError


@pytest.mark.parametrize(
    ("arch", "task", "shape", "n_params"),
    [
        ("cnn2", "mnist3", (1, 28, 28), 225_034),  # the paper's "225k parameters"
        ("cnn2", "cifar10", (3, 32, 32), 2432 + 51264 + 204928 + 1290),
        ("cnn3", "mnist3", (1, 28, 28), 619_786),  # the original's NetBWThree
        ("cnn3", "cifar10", (3, 32, 32), 620_362),  # NetRGBThree
        ("logreg", "mnist3", (1, 28, 28), 784 * 10 + 10),
        ("logreg", "cifar10", (3, 32, 32), 3072 * 10 + 10),
    ],
)
def test_architecture(arch, task, shape, n_params):
    model = build_model(arch, task)
    assert num_parameters(model) == n_params
    assert model(torch.zeros(7, *shape)).shape == (7, 10)


def test_unknown_arch():
    with pytest.raises(UserError, match="unknown --arch"):
        build_model("resnet", "mnist3")


@pytest.mark.parametrize(
    ("task", "shape", "convs"),
    [  # (weight shape, padding) per conv, as the issue gives NetBWThree and NetRGBThree
        ("mnist3", (1, 28, 28), [((32, 1, 3, 3), 0), ((64, 32, 3, 3), 2), ((128, 64, 3, 3), 2)]),
        ("cifar10", (3, 32, 32), [((32, 3, 3, 3), 0), ((64, 32, 3, 3), 0), ((128, 64, 3, 3), 2)]),
    ],
)
def test_cnn3_is_the_papers_three_layer_net(task, shape, convs):
    """Layer shapes, and the forward pass equal to the net written out by hand with the same weights."""
    torch.manual_seed(0)
    model = build_model("cnn3", task).eval()
    for i, (weight_shape, padding) in enumerate(convs, start=1):
        conv = getattr(model, f"conv{i}")
        assert tuple(conv.weight.shape) == weight_shape and conv.padding == (padding, padding)
    assert tuple(model.fc1.weight.shape) == (256, 2048) and tuple(model.fc2.weight.shape) == (10, 256)
    p = dict(model.named_parameters())

    def by_hand(x):
        for i, (_, padding) in enumerate(convs, start=1):
            x = F.conv2d(x, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=padding)
            x = F.max_pool2d(F.gelu(x), 2)
        x = F.gelu(F.linear(x.reshape(len(x), 2048), p["fc1.weight"], p["fc1.bias"]))
        return F.linear(x, p["fc2.weight"], p["fc2.bias"])

    x = torch.randn(5, *shape)
    with torch.no_grad():
        torch.testing.assert_close(model(x), by_hand(x))


def test_runs_of_the_earlier_cnn3_are_refused(tmp_path):
    """A checkpoint, a finished run and a score file of the earlier cnn3 (no `net` in the config) say to retrain."""
    from bayestda.artifacts.checkpoints import read_checkpoint, save_checkpoint, seed_is_complete
    from bayestda.artifacts.scores import load_scores, save_scores
    from bayestda.core.io import atomic_write_json

    config = {"family": "cnn", "model": "cnn3", "arch": "cnn3", "task": "mnist3", "num_per_class": 50, "seed": 0}
    model = build_model("cnn2", "mnist3")
    path = tmp_path / "ckpt_epoch_15.pt"
    save_checkpoint(path, model, torch.optim.Adam(model.parameters()), config)
    retrain = "python train_cnn.py --task mnist3 --num_per_class 50 --arch cnn3 --posterior de --overwrite"
    with pytest.raises(UserError, match="earlier cnn3") as err:
        read_checkpoint(path)
    assert "NetBWThree" in str(err.value) and retrain in str(err.value) and "\n" not in str(err.value)
    atomic_write_json({"config": config}, tmp_path / "metrics.json")
    with pytest.raises(UserError, match="earlier cnn3"):
        seed_is_complete(tmp_path, {**config, "net": "NetBWThree"})
    score_path = tmp_path / "0.pt"
    save_scores(score_path, torch.zeros(1, 2, 3), [0, 1], [0, 1, 2], [15], 0, "gd", {"checkpoint_config": config}, 1)
    with pytest.raises(UserError, match=r"earlier cnn3.*recompute the scores"):
        load_scores(score_path)
    # The same files of a current cnn3 run load.
    current = {**config, "net": "NetBWThree"}
    save_checkpoint(path, build_model("cnn3", "mnist3"), torch.optim.Adam(model.parameters()), current)
    assert read_checkpoint(path)["config"] == current
    save_scores(score_path, torch.zeros(1, 2, 3), [0, 1], [0, 1, 2], [15], 0, "gd", {"checkpoint_config": current}, 1)
    assert load_scores(score_path)["method"] == "gd"


def test_step_two_on_an_earlier_cnn3_run_says_to_retrain(run_script, tmp_path):
    from bayestda.artifacts.checkpoints import save_checkpoint
    from bayestda.core.io import atomic_write_json
    from bayestda.core.paths import checkpoint_file, seed_model_dir

    config = {"family": "cnn", "model": "cnn3", "arch": "cnn3", "task": "mnist3", "num_per_class": 10, "seed": 0,
              "epochs": 15}  # fmt: skip
    seed_dir = seed_model_dir(tmp_path, "cnn3", "mnist3", 10, 0)
    model = build_model("cnn2", "mnist3")
    for epoch in range(11, 16):
        save_checkpoint(checkpoint_file(seed_dir, epoch), model, torch.optim.Adam(model.parameters()), config)
    atomic_write_json({"config": config}, seed_dir / "metrics.json")
    proc = run_script("tda_cnn_scripts/gd.py", "--model", "cnn3", "--task", "mnist3", "--num_per_class", "10",
                      "--seed_id", "0", "--out_root", str(tmp_path))  # fmt: skip
    one_line_error(proc, "earlier cnn3", "python train_cnn.py --task mnist3 --num_per_class 10 --arch cnn3")
    assert proc.returncode == 2
