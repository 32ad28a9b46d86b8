"""Score files: one seed's τ for every checkpoint × train × test pair, as in ../shared/DESIGN.md.

A score file is a dict saved with `torch.save`:
`scores` float32 [n_ckpts, n_train, n_test], `train_idx`, `test_idx` (dataset indices of rows and
columns), `ckpt_epochs`, `seed`, `method`, `config` (every choice that shaped the numbers) and
`sign`: +1 if a positive score means "z_j helps z", −1 if a negative one does (the method's
`helps_sign` in the registry). So `sign · τ` is "helps is positive" for every method.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import families
from .errors import UserError
from .io import atomic_torch_save
from .methods import registry

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
) -> None:
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
        "sign": registry.helps_sign(method),
    }
    atomic_torch_save(record, path)


def load_scores(path: Path) -> dict:
    """A validated score file; a UserError names the file and what is wrong with it."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"score file {path} does not exist") from None
    except Exception as exc:
        raise UserError(
            f"score file {path} cannot be read ({type(exc).__name__}: {exc}); recompute it with --overwrite"
        ) from None
    missing = [k for k in KEYS if k not in record]
    if missing:
        raise UserError(f"score file {path} lacks {', '.join(missing)}; recompute it with --overwrite")
    s = record["scores"]
    expected = (len(record["ckpt_epochs"]), len(record["train_idx"]), len(record["test_idx"]))
    if s.ndim != 3 or tuple(s.shape) != expected:
        raise UserError(
            f"score file {path}: scores have shape {tuple(s.shape)}, expected ckpts × train × test = {expected}"
        )
    bad = int((~torch.isfinite(s)).sum())
    if bad:
        raise UserError(
            f"score file {path} has {bad} NaN/inf scores; recompute it with --overwrite and check the method's settings"
        )
    if ckpt_config := record["config"].get("checkpoint_config"):
        families.check_config(ckpt_config, f"score file {path}", then=", then recompute the scores with --overwrite")
    if record["sign"] not in (-1, 1):
        raise UserError(f"score file {path}: sign must be +1 or -1, got {record['sign']!r}")
    return record
