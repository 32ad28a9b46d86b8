"""Model families: how a run config becomes a model, what its checkpoints hold, what its inputs are.

Every later step rebuilds a model from the config stored in its checkpoint, so this is the one place
that knows the difference between the CNNs and the ViT:

- `cnn` (cnn2, cnn3): built from (arch, task); checkpoints hold the whole state_dict; inputs are
  the paper's preprocessed tensors; training is the plain loop.
- `vit`: a pretrained backbone plus LoRA (`vit.py`); checkpoints hold the trainable tensors only
  (LoRA and classifier); inputs are [0, 1] pixels that the model resizes and normalises itself;
  training adds random crops, dropout, a linear lr decay and optional autocast.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache

import torch
from torch import nn

from .models import build_model
from .training import TrainExtras, seeded_init


def family(config: dict) -> str:
    return config.get("family", "cnn")


def build(config: dict) -> nn.Module:
    """A model of the config's family, initialised from torch's global RNG."""
    if family(config) == "vit":
        from .vit import vit_from_config

        return vit_from_config(config)
    return build_model(config["arch"], config["task"])


def init(config: dict) -> nn.Module:
    """The run's initial model: a function of the config's `init_seed` only.

    Built once per process and copied after that: every LOO retrain and every checkpoint load starts
    here, and for the ViT a build reads the whole backbone from disk.
    """
    key = {k: v for k, v in config.items() if k != "epoch"}  # a checkpoint's epoch does not change the init
    return copy.deepcopy(_initial_model(json.dumps(key, sort_keys=True)))


@lru_cache(maxsize=2)
def _initial_model(config_json: str) -> nn.Module:
    config = json.loads(config_json)
    return seeded_init(config["init_seed"], lambda: build(config))


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: the trainable ones for the ViT, everything for the CNNs."""
    if hasattr(model, "trainable_state"):
        return model.trainable_state()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> nn.Module:
    if hasattr(model, "load_trainable_state"):
        model.load_trainable_state(state, source)
    else:
        model.load_state_dict(state)
    return model


def from_state(config: dict, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> nn.Module:
    """The model of a checkpoint (config and stored tensors), in eval mode; torch's global RNG is untouched."""
    return load_state(init(config), state, source).eval()


def raw_pixels(family_name: str) -> bool:
    """Whether a family takes [0, 1] pixels (and preprocesses them itself) rather than the paper's tensors."""
    return family_name == "vit"


def train_extras(config: dict) -> TrainExtras:
    if family(config) == "vit":
        from .vit import vit_train_extras

        return vit_train_extras(config)
    return TrainExtras()
