"""The model families' architectures: shapes and parameter counts."""

import pytest
import torch
from helpers import build_model, num_parameters

from bayestda.errors import UserError


@pytest.mark.parametrize(
    ("arch", "task", "shape", "n_params"),
    [
        ("cnn2", "mnist3", (1, 28, 28), 225_034),  # the paper's "225k parameters"
        ("cnn2", "cifar10", (3, 32, 32), 2432 + 51264 + 204928 + 1290),
        ("cnn3", "mnist3", (1, 28, 28), 225_034 + 64 * 64 * 9 + 64),
        ("cnn3", "cifar10", (3, 32, 32), 2432 + 51264 + 204928 + 1290 + 64 * 64 * 25 + 64),
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
