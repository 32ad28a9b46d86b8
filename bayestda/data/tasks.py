"""Tasks: what a model is trained and scored on, declared once each, as model families and methods are.

A task is a `Task` passed to `register`, in its own module: `bayestda/tasks/mnist3.py` and `cifar10.py` for the
paper's two, or a plug-in's module for a user's own (`core.plugins`; `examples/digits.py` is a whole one). It says
- where its images come from: `load_split(train, data_root)` gives the raw images and labels of the train or test
  split, and `preprocess(images, pixels)` turns raw images into the float tensors every model sees;
- which labels it keeps (`classes`), how many logits a model has (`num_outputs`) and the input shape;
- which images an experiment uses: the test subset (`test_per_class` images per class, or the whole test split)
  and the rule for training subsets (`pool`: the indices a subset may be drawn from; by default all of them),
  from which `data.subsets` draws balanced, nested subsets of any size per class, or the whole split (`all`);
- its default training budget (`epochs`) and, optionally, a default training recipe (`recipe`,
  `training.recipe.TrainConfig` fields).

A run of a task on the original code's index files (`--subsets paper`, only for tasks that have them) is named
`<task>-paper`, so its artifacts never mix with the nested ones'; `Task.name` is that artifact name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.registry import Registry

SUBSETS = ("nested", "paper")  # --subsets choices; the first is the default
PAPER_SUBSETS_ENV = "BAYESTDA_PAPER_SUBSETS"
PAPER_REPO = "github.com/ElisaNguyen/bayesian-tda"
NAME = re.compile(r"[a-z][a-z0-9]*")  # artifact names join task, model and size with '_' and '-'


@dataclass(frozen=True)
class Task:
    """One task: its data sources, classes and subsets, and the training budget it is run with by default."""

    name: str  # the --task value and artifact name (with `-paper` on the original's subsets)
    summary: str  # one line for --help
    # (train split?, data root) -> raw images [N, ...] and integer labels [N] of the whole split
    load_split: Callable[[bool, Path], tuple[np.ndarray, np.ndarray]]
    # (raw images [B, ...], pixels) -> float inputs [B, *input_shape]; `pixels`: for a model family that normalises
    # its inputs itself (the ViT), [0, 1] pixels without the task's normalisation
    preprocess: Callable[[np.ndarray, bool], torch.Tensor]
    classes: tuple[int, ...]  # the labels the task keeps; images of other labels are never drawn
    input_shape: tuple[int, ...]  # one preprocessed input, e.g. (1, 28, 28)
    epochs: int  # the default training budget
    test_per_class: int | None = None  # test subset: this many per class; None: every test image of the classes
    num_outputs: int | None = None  # logits; None: len(classes)
    # (train split?, number of images) -> the indices subsets may be drawn from (the subset rule); None: all
    pool: Callable[[bool, int], np.ndarray] | None = None
    recipe: dict = field(default_factory=dict)  # training-recipe defaults of this task (`training.recipe`)
    paper_subsets: bool = False  # the original code has index files for it (`--subsets paper`)
    # (what, indices, data root) -> warnings about a subset of the original's files (beyond its class balance)
    describe_paper_subset: Callable[[str, np.ndarray, Path], list[str]] | None = None
    subsets: str = SUBSETS[0]

    def __post_init__(self):
        if self.num_outputs is None:
            object.__setattr__(self, "num_outputs", len(self.classes))

    @property
    def task(self) -> str:
        """The --task value."""
        return self.name.removesuffix(f"-{self.subsets}")

    @property
    def argv(self) -> list[str]:
        """--task and, if not the default, --subsets: the flags that name this task in a command."""
        return ["--task", self.task, *(["--subsets", self.subsets] if self.subsets != SUBSETS[0] else [])]

    def candidates(self, train: bool, n_images: int) -> np.ndarray:
        """The indices of a split that subsets may be drawn from."""
        return np.arange(n_images) if self.pool is None else self.pool(train, n_images)


_TASKS = Registry("bayestda.tasks", "task")


def register(task: Task) -> Task:
    """Make a task known to every step."""
    if not NAME.fullmatch(task.name):
        raise ValueError(f"task name {task.name!r}: use lower-case letters and digits, starting with a letter")
    _TASKS.add(task.name, task)
    return task


def all_tasks() -> dict[str, Task]:
    return _TASKS.loaded()


def origin(name: str) -> str | None:
    """The plug-in that declared a task (its path or module), or None for the package's own."""
    return _TASKS.origin(get_task(name).task)


def task_name(task: str, subsets: str = SUBSETS[0]) -> str:
    """The artifact name of a --task on a choice of --subsets: `mnist3`, or `mnist3-paper`."""
    return task if subsets == SUBSETS[0] else f"{task}-{subsets}"


def get_task(task: str) -> Task:
    """The task of an artifact name (`mnist3`, `mnist3-paper`)."""
    tasks = all_tasks()
    base, _, subsets = task.partition("-")
    if base not in tasks or subsets not in ("", *SUBSETS[1:]):
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(tasks)} (with --subsets "
                        f"{'|'.join(SUBSETS)}), or load the plug-in that declares it with --plugin PATH")  # fmt: skip
    spec = tasks[base]
    if not subsets:
        return spec
    if not spec.paper_subsets:
        raise UserError(f"--subsets {subsets}: the original code has no index files for {base}; use --subsets nested")
    return dataclasses.replace(spec, name=task, subsets=subsets)


def task_argv(task: str) -> list[str]:
    return get_task(task).argv


def summaries() -> str:
    """Every task with its summary, for --help."""
    return "; ".join(f"{t.name}: {t.summary}" for t in all_tasks().values())
