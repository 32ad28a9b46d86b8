"""Score files: one seed's τ for every checkpoint × train × test pair, as in ../shared/DESIGN.md.

A score file is a dict saved with `torch.save`:
`scores` float32 [n_ckpts, n_train, n_test] (n_ckpts = 1 for a method with one τ per seed: TracIn),
`train_idx`, `test_idx` (dataset indices of rows and columns), `ckpt_epochs`, `seed`, `method`, `config` (every
choice that shaped the numbers) and
`sign`: +1 if a positive score means "z_j helps z", −1 if a negative one does (the method's
`helps_sign` in the registry). So `sign · τ` is "helps is positive" for every method.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core import plugins
from ..core.errors import UserError
from ..core.io import atomic_torch_save
from ..models import families

KEYS = ("scores", "train_idx", "test_idx", "ckpt_epochs", "seed", "method", "config", "sign")


def save_scores(
    path: Path,
    scores: torch.Tensor,
    train_idx,
    test_idx,
    ckpt_epochs,
    seed: int,
    method: str,
    config: dict,
    sign: int,
) -> None:
    """Atomically write one seed's score file; `sign` is the method's "helps" sign."""
    if sign not in (-1, 1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    scores = torch.as_tensor(scores).detach().cpu().float()
    train_idx, test_idx = torch.as_tensor(train_idx).long(), torch.as_tensor(test_idx).long()
    if scores.shape != (len(ckpt_epochs), len(train_idx), len(test_idx)):
        raise ValueError(f"scores shape {tuple(scores.shape)} does not match ckpts × train × test")
    record = {
        "scores": scores,
        "train_idx": train_idx,
        "test_idx": test_idx,
        "ckpt_epochs": list(ckpt_epochs),
        "seed": int(seed),
        "method": method,
        "config": json.loads(json.dumps(config, default=str)),  # plain types only: loadable with weights_only
        "sign": sign,
    }
    atomic_torch_save(record, path)


def load_scores(path: Path, remake: str = "the step-2 command that made it, with --overwrite") -> dict:
    """A score file checked for its own consistency; a UserError names the file, what is wrong with it and
    `remake` (the command that writes it again). `statistics.check_score_files` checks it against an experiment."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"score file {path} does not exist; make it with: {remake}") from None
    except Exception as exc:
        raise UserError(f"score file {path} cannot be read ({type(exc).__name__}; truncated or corrupt); "
                        f"recompute it with: {remake}") from None  # fmt: skip
    if not isinstance(record, dict):
        raise UserError(f"score file {path} holds a {type(record).__name__}, not a score-file dict "
                        f"(../shared/DESIGN.md); recompute it with: {remake}")  # fmt: skip
    if missing := [k for k in KEYS if k not in record]:
        raise UserError(f"score file {path} lacks {', '.join(missing)}; recompute it with: {remake}")
    s, train_idx, test_idx = record["scores"], record["train_idx"], record["test_idx"]
    for key in ("train_idx", "test_idx"):
        v = record[key]
        if not (isinstance(v, torch.Tensor) and v.ndim == 1 and not v.is_floating_point()):
            raise UserError(f"score file {path}: {key} must be a 1-D integer tensor, not {type(v).__name__} "
                            f"(an older format); recompute it with: {remake}")  # fmt: skip
    if not isinstance(s, torch.Tensor) or not isinstance(record["ckpt_epochs"], list):
        raise UserError(
            f"score file {path}: scores must be a tensor and ckpt_epochs a list; recompute it with: {remake}"
        )
    expected = (len(record["ckpt_epochs"]), len(train_idx), len(test_idx))
    if s.ndim != 3 or tuple(s.shape) != expected:
        raise UserError(f"score file {path}: scores have shape {tuple(s.shape)}, expected ckpts × train × test = "
                        f"{expected}; recompute it with: {remake}")  # fmt: skip
    bad = int((~torch.isfinite(s)).sum())
    if bad:
        raise UserError(f"score file {path} has {bad} NaN/inf scores; check the method's settings and recompute it "
                        f"with: {remake}")  # fmt: skip
    if not isinstance(record["config"], dict):
        raise UserError(f"score file {path}: config must be a dict; recompute it with: {remake}")
    plugins.ensure(record["config"], f"score file {path}")  # a plug-in's method
    if ckpt_config := record["config"].get("checkpoint_config"):
        families.check_config(ckpt_config, f"score file {path}", then=f", then recompute the scores with: {remake}")
    if record["sign"] not in (-1, 1):
        raise UserError(
            f"score file {path}: sign must be +1 or -1, got {record['sign']!r}; recompute it with: {remake}"
        )
    return record
