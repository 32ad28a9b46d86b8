"""Checkpoint files: weights plus the config they were trained with, so later steps need no flags.

`load_checkpoint(path) -> (model, config)` rebuilds any model in eval mode on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import families
from .errors import UserError
from .io import atomic_torch_save
from .paths import checkpoint_file, last_epochs, metrics_file

FORMAT = "bayestda-checkpoint-v1"


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> None:
    """Atomically write weights (all of a CNN's; a ViT's trainable ones), optimizer state (to continue
    training exactly) and config."""
    state = families.model_state(model)
    atomic_torch_save(
        {"format": FORMAT, "config": config, "state_dict": state, "optimizer_state": optimizer.state_dict()}, path
    )


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; train it first (python train_cnn.py --help, finetune_vit.py --help)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a bayestda checkpoint (expected format {FORMAT!r})")
    families.check_config(ckpt["config"], str(path))
    return ckpt


def load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    """The model of a checkpoint, in eval mode on CPU, and the config it was trained with."""
    ckpt = read_checkpoint(path)
    return families.from_state(ckpt["config"], ckpt["state_dict"], str(path)), ckpt["config"]


def read_metrics(seed_dir: Path) -> dict | None:
    path = metrics_file(seed_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def finished_checkpoints(seed_dir: Path) -> list[Path] | None:
    """The posterior-sample checkpoints of a finished training run, oldest first, or None if the run is not
    finished: metrics.json (written last) must be there, and the checkpoints of its last epochs."""
    metrics = read_metrics(seed_dir)
    if metrics is None:
        return None
    paths = [checkpoint_file(seed_dir, e) for e in last_epochs(metrics["config"]["epochs"])]
    return paths if all(p.is_file() for p in paths) else None


def seed_is_complete(seed_dir: Path, config: dict) -> bool:
    """True when the run in `seed_dir` finished with this config; an error when it finished with another."""
    metrics = read_metrics(seed_dir)
    if metrics is None:
        return False
    done = metrics["config"]
    families.check_config(done, str(seed_dir))
    if done != config:
        diff = sorted(k for k in done.keys() | config.keys() if done.get(k) != config.get(k))
        raise UserError(
            f"{seed_dir} holds a run trained with other settings ({', '.join(diff)} differ); "
            "pass --overwrite to retrain it, or --out_root to write elsewhere"
        )
    return finished_checkpoints(seed_dir) is not None


def seed_checkpoints(seed_dir: Path, train_command: str) -> list[Path]:
    """The posterior-sample checkpoints of a finished seed, oldest first; a clear error if unfinished."""
    paths = finished_checkpoints(seed_dir)
    if paths is None:
        raise UserError(f"{seed_dir} has no finished training run; make it with: {train_command}")
    return paths
