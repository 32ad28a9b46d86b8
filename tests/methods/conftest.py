"""The tiny models the method tests share: a small CNN and a LoRA ViT, trained briefly, in float64."""

from typing import NamedTuple

import pytest
import torch

from bayestda.data.subsets import Subset

from .reference import micro_vit, per_pair_grads, toy_data, trained_tiny


class Case(NamedTuple):
    net: str
    model: torch.nn.Module
    train: Subset
    test: Subset
    g_train: torch.Tensor
    g_test: torch.Tensor
    tol: dict  # against an explicit solve
    same_recursion: dict  # against the same recursion computed another way


@pytest.fixture(scope="module", params=["tiny", "vit"])
def case(request, micro_vit_dir) -> Case:
    train, test = toy_data(20), toy_data(6, seed=3)
    start = None if request.param == "tiny" else micro_vit(micro_vit_dir)
    model = trained_tiny(train, steps=200, model=start)
    g_train = torch.stack(per_pair_grads(model, train))
    g_test = torch.stack(per_pair_grads(model, test))
    if request.param == "tiny":
        return Case(
            "tiny", model, train, test, g_train, g_test, {"rtol": 1e-4, "atol": 1e-8}, {"rtol": 1e-9, "atol": 1e-12}
        )
    # HF's eager attention takes its softmax in float32 even in a float64 model, so the ViT's results
    # carry float32 rounding (~1e-8 relative): absolute tolerances follow the scores' scale.
    scale = (g_train @ g_test.T).abs().max().item()
    tol, same = {"rtol": 1e-4, "atol": 1e-6 * scale}, {"rtol": 1e-5, "atol": 1e-7 * scale}
    return Case("vit", model, train, test, g_train, g_test, tol, same)
