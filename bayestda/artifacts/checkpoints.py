"""Checkpoint files: weights plus the config they were trained with, so later steps need no flags.

`load_checkpoint(path) -> (model, config)` rebuilds any model in eval mode on CPU.

A seed's folder holds one training run: `metrics.json` (written last, the done marker) and the checkpoints of
its last epochs. `read_run` gives those checkpoints only if they are readable and all of that one run (their
epochs and config agree with metrics.json), so nothing is scored on a truncated file or on a mix of two runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..core import hints
from ..core.errors import UserError
from ..core.io import atomic_torch_save
from ..core.paths import checkpoint_file, last_epochs, metrics_file, parse_seed_dir, read_seeds
from ..models import families
from ..training.recipe import normalise

FORMAT = "bayestda-checkpoint-v1"


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> None:
    """Atomically write weights (all of a CNN's; a ViT's trainable ones), optimizer state (to continue
    training exactly) and config."""
    state = families.model_state(model)
    atomic_torch_save(
        {"format": FORMAT, "config": config, "state_dict": state, "optimizer_state": optimizer.state_dict()}, path
    )


def retrain_command(seed_dir: Path) -> str:
    """The step-1 command that redoes one seed's training run, from where its folder is."""
    parsed = parse_seed_dir(seed_dir)
    generic = "the step-1 command that made it, with --overwrite (python train_cnn.py --help, finetune_vit.py --help)"
    if parsed is None:  # not under <out_root>/models/<model>/<task>_<n>pc/<seed>
        return generic
    model, task, n, seed = parsed
    try:
        argv = families.of_model(model).train_argv(model, task, n)
    except UserError:
        return generic
    seeds = read_seeds()
    if seed not in seeds:
        command = hints.command(argv, "--seed_id", "K", "--overwrite")
        return f"{command}, with K the line of seed {seed} in seeds.txt (add it back first)"
    return hints.command(argv, "--seed_id", str(seeds.index(seed)), "--overwrite")


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; train it first (python train_cnn.py --help, finetune_vit.py --help)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}; truncated or corrupt); "
                        f"retrain its seed with: {retrain_command(path.parent)}") from None  # fmt: skip
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path} is not a bayestda checkpoint (expected format {FORMAT!r}); "
                        f"retrain its seed with: {retrain_command(path.parent)}")  # fmt: skip
    families.check_config(ckpt["config"], str(path))
    return ckpt


def load_checkpoint(path: Path) -> tuple[nn.Module, dict]:
    """The model of a checkpoint, in eval mode on CPU, and the config it was trained with."""
    ckpt = read_checkpoint(path)
    return families.from_state(ckpt["config"], ckpt["state_dict"], str(path)), ckpt["config"]


def read_metrics(seed_dir: Path) -> dict | None:
    """A seed's metrics.json, or None if its run has not finished; a one-line error if it is unreadable."""
    path = metrics_file(seed_dir)
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}; empty or corrupt); "
                        f"retrain the seed with: {retrain_command(seed_dir)}") from None  # fmt: skip
    if not isinstance(metrics, dict) or not isinstance(metrics.get("config"), dict):
        raise UserError(f"{path} is not a bayestda metrics.json (no run config); "
                        f"retrain the seed with: {retrain_command(seed_dir)}")  # fmt: skip
    return metrics


def retrained_since(seed_dir: Path, config: dict) -> bool:
    """Whether the seed's finished run is no longer the one whose run `config` an artifact recorded (it was retrained
    since). A seed without a finished run counts as not retrained: there is nothing newer to compare with."""
    metrics = read_metrics(seed_dir)
    return metrics is not None and metrics["config"] != config


def _run_checkpoints(seed_dir: Path, metrics: dict) -> list[Path] | None:
    """The checkpoint paths of the last epochs of the run `metrics` describes, or None if one is missing."""
    if not isinstance(epochs := metrics["config"].get("epochs"), int):
        raise UserError(f"{metrics_file(seed_dir)} does not say how many epochs its run had; "
                        f"retrain the seed with: {retrain_command(seed_dir)}")  # fmt: skip
    paths = [checkpoint_file(seed_dir, e) for e in last_epochs(epochs)]
    return paths if all(p.is_file() for p in paths) else None


def finished_checkpoints(seed_dir: Path) -> list[Path] | None:
    """The posterior-sample checkpoints of a finished training run, oldest first, or None if the run is not
    finished: metrics.json (written last) must be there, and the checkpoints of its last epochs."""
    metrics = read_metrics(seed_dir)
    return None if metrics is None else _run_checkpoints(seed_dir, metrics)


def _read_checked(seed_dir: Path, paths: list[Path], run: dict) -> list[dict]:
    """Each checkpoint read, and checked to be of `run` (the config in metrics.json) at its epoch."""
    checkpoints = [read_checkpoint(p) for p in paths]
    for path, ckpt, epoch in zip(paths, checkpoints, last_epochs(run["epochs"]), strict=True):
        config = dict(ckpt["config"])
        if config.pop("epoch", None) != epoch or config != run:
            diff = sorted(k for k in config.keys() | run.keys() if config.get(k) != run.get(k))
            what = f"epoch {ckpt['config'].get('epoch')}" if not diff else f"{', '.join(diff)} differ"
            raise UserError(f"{path} is not of the run {metrics_file(seed_dir)} describes ({what}): the folder mixes "
                            f"two training runs; retrain the seed with: {retrain_command(seed_dir)}")  # fmt: skip
    return checkpoints


def read_run(seed_dir: Path, train_command: str) -> list[dict]:
    """The checkpoints of a seed's finished run (`read_checkpoint` records, oldest first), each checked to be
    of the run metrics.json describes: its epoch, and a config equal to the run's."""
    paths, metrics = _finished_run(seed_dir, train_command)
    return _read_checked(seed_dir, paths, metrics["config"])


def seed_is_complete(seed_dir: Path, config: dict) -> bool:
    """True when the run in `seed_dir` finished with this config and its checkpoints are readable and of that
    run; an error when it finished with another config, or its files are corrupt."""
    metrics = read_metrics(seed_dir)
    if metrics is None:
        return False
    done = metrics["config"]
    families.check_config(done, str(seed_dir))
    old, new = normalise(done), normalise(config)  # a run recorded before the recipe's optimizer fields: Adam
    if old != new:
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise UserError(
            f"{seed_dir} holds a run trained with other settings ({', '.join(diff)} differ); "
            "pass --overwrite to retrain it, or --out_root to write elsewhere"
        )
    paths = _run_checkpoints(seed_dir, metrics)
    if paths is None:
        return False
    _read_checked(seed_dir, paths, done)
    return True


def _finished_run(seed_dir: Path, train_command: str) -> tuple[list[Path], dict]:
    """The checkpoint paths and metrics.json of a finished seed; a clear error if unfinished."""
    metrics = read_metrics(seed_dir)
    paths = None if metrics is None else _run_checkpoints(seed_dir, metrics)
    if paths is None:
        raise UserError(f"{seed_dir} has no finished training run; make it with: {train_command}")
    return paths, metrics


def seed_checkpoints(seed_dir: Path, train_command: str) -> list[Path]:
    """The posterior-sample checkpoints of a finished seed, oldest first; a clear error if unfinished."""
    return _finished_run(seed_dir, train_command)[0]
