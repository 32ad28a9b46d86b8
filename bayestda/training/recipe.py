"""The training recipe: how a run is optimised, declared once, typed, and recorded in the run's config.

`TrainConfig` holds every choice of the optimisation: the optimizer (`adam`, the paper's; or `sgd`, with momentum
and Nesterov off or on), its learning rate and L2 weight decay (added to the gradient, as torch's `weight_decay`),
the batch size, the epoch budget, and the dropout rate of families that have dropout layers. Its fields are part of
every run config (each checkpoint and `metrics.json`), and everything that trains or replays a run reads them from
there: training, LOO retrains (stacked too), ATS's fresh step, UD's and TracIn's replays, the LDS retrains.

Defaults come in layers: the paper's recipe (Adam, lr 1e-3, weight decay 5e-3, batch 32), then the task's
(`Task.recipe`, and its `epochs`), then the model family's (`ModelFamily.recipe`), then the flags (`RecipeOptions`:
`--optimizer --lr --weight_decay --momentum --nesterov --batch_size --epochs --dropout`). A run config written
before the recipe had its optimizer fields is read as the Adam run it was (`from_config`, `normalise`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ..core.errors import UserError
from ..core.options import check, option

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """A run's optimisation recipe; the defaults are the paper's (Adam, L2 weight decay, batch 32)."""

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 5e-3
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.0  # sgd
    nesterov: bool = False  # sgd, with momentum
    dropout: float = 0.0  # the model's dropout rate (families with dropout layers)

    def __post_init__(self):
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.optimizer != "sgd" and (self.momentum or self.nesterov):
            problems.append(f"--momentum and --nesterov are for --optimizer sgd, not {self.optimizer}")
        if self.nesterov and not self.momentum > 0:
            problems.append("--nesterov on needs --momentum above 0")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.dropout < 1:
            problems.append(f"the recipe needs lr > 0, weight decay >= 0 and momentum and dropout in [0, 1); got lr "
                            f"{self.lr}, weight decay {self.weight_decay}, momentum {self.momentum}, dropout "
                            f"{self.dropout}")  # fmt: skip
        if self.batch_size < 1 or self.epochs < 1:
            problems.append(f"batch size and epochs must be at least 1, got {self.batch_size} and {self.epochs}")
        if problems:
            raise UserError("; ".join(problems))

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> TrainConfig:
        """The recipe recorded in a run config; fields an older config lacks have the values its Adam run used."""
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})

    def describe(self) -> str:
        extra = (
            f", momentum {self.momentum:g}{' (Nesterov)' if self.nesterov else ''}" if self.optimizer == "sgd" else ""
        )
        drop = f", dropout {self.dropout:g}" if self.dropout else ""
        return (f"{self.optimizer} (lr {self.lr:g}, weight decay {self.weight_decay:g}{extra}), batch "
                f"{self.batch_size}, {self.epochs} epochs{drop}")  # fmt: skip


def normalise(config: dict) -> dict:
    """A run config with every recipe field, for comparing one written before the optimizer fields existed with a
    new one (the same Adam run)."""
    return {**config, **TrainConfig.from_config(config).as_dict()} if "epochs" in config else dict(config)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh optimizer of the recipe over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one kernel per op over all tensors; bit-identical to the per-tensor loop, and faster (BENCHMARKS.md)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, foreach=True)  # fmt: skip
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@dataclass(frozen=True)
class RecipeOptions:
    """The recipe's flags; None: the default of the model family, else of the task, else the paper's."""

    optimizer: str | None = option(None, "adam (the paper's) or sgd; default: the model family's, else adam",
                                   choices=OPTIMIZERS)  # fmt: skip
    lr: float | None = option(None, "learning rate; default: the model family's, else 1e-3", positive=True)
    weight_decay: float | None = option(None, "L2 weight decay, added to the gradient (torch's weight_decay); "
                                        "default: the model family's, else 5e-3", minimum=0)  # fmt: skip
    momentum: float | None = option(None, "sgd: momentum; default: the model family's, else 0", minimum=0)
    nesterov: str | None = option(None, "sgd: Nesterov momentum, off or on; default: the model family's, else off",
                                  choices=("off", "on"))  # fmt: skip
    batch_size: int | None = option(None, "training batch size; default: the model family's, else 32", minimum=1)
    epochs: int | None = option(None, "epoch budget; default: the model family's, else the task's (mnist3 15, "
                                "cifar10 30)", minimum=1)  # fmt: skip
    dropout: float | None = option(None, "dropout rate of a model family with dropout layers; default: the family's, "
                                   "else 0", minimum=0)  # fmt: skip

    def given(self) -> dict:
        """The flags set, as recipe fields."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if "nesterov" in out:
            out["nesterov"] = out["nesterov"] == "on"
        return out

    def argv(self) -> list[str]:
        """The flags set, as a command line."""
        return [part for f in fields(self) if (v := getattr(self, f.name)) is not None
                for part in (f"--{f.name}", str(v))]  # fmt: skip


def resolve(task_recipe: dict, task_epochs: int, family_recipe: dict, flags: RecipeOptions) -> TrainConfig:
    """The recipe of a run: the paper's, then the task's, then the model family's, then the flags."""
    check(flags)
    return TrainConfig(**{"epochs": task_epochs, **task_recipe, **family_recipe, **flags.given()})
