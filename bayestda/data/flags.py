"""The flags that name a task and its images: --task, --subsets, --num_per_class, --data_root (and the rest of the
flags every step shares, ../shared/DESIGN.md).

Task names are checked after parsing, once the plug-ins are loaded (`core.cli.Parser`), so a plug-in's task is a
valid --task; with --subsets, `task` becomes the task's artifact name (`data.tasks.task_name`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.cli import Parser
from ..core.paths import ALL, DATA_ROOT_ENV, size_of
from .tasks import PAPER_REPO, PAPER_SUBSETS_ENV, SUBSETS, get_task, summaries, task_name


class _ExportDir(argparse.Action):
    """Put the folder in the environment, where the data loader and every process this one starts find it."""

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[PAPER_SUBSETS_ENV] = str(Path(values).resolve())
        setattr(namespace, self.dest, values)


def _size(text: str) -> int | str:
    """--num_per_class: a whole number of training images per class, or `all` (the whole split)."""
    if (size := size_of(text)) in (None, 0):
        raise argparse.ArgumentTypeError(f"must be a whole number of training images per class (at least 1), or {ALL} "
                                         f"for the whole training split, got {text!r}")  # fmt: skip
    return size


_size.__name__ = "size"


def add_task(p: Parser, group=None, required: bool = True, with_dir: bool = True) -> None:
    """--task (a registered task, checked after parsing) and --subsets (and --paper_subsets_dir with `with_dir`)."""
    g = group or p
    g.add_argument("--task", required=required, default=None, help=f"the task: {summaries()}")
    add_subsets_args(p, group, with_dir)

    def check(ns):
        if ns.task is not None:
            get_task(ns.task)  # a one-line error for an unknown task
            ns.task = task_name(ns.task, ns.subsets)
            get_task(ns.task)  # and for --subsets paper on a task without the original's files

    p.after_parse(check)


def add_num_per_class(p: Parser, group=None, required: bool = True) -> None:
    (group or p).add_argument("--num_per_class", type=_size, required=required, default=None,
                              help=f"training images per class: any number the split holds, or {ALL} for the whole "
                              "training split")  # fmt: skip


def add_subsets_args(p, group=None, with_dir: bool = True) -> None:
    """--subsets and, for scripts that read the images, --paper_subsets_dir (which images a task uses)."""
    (group or p).add_argument("--subsets", default=SUBSETS[0], choices=SUBSETS,
                              help="nested: this package's balanced, nested index files (data/<task>/); paper: the "
                              "original code's own files, as it used them (artifacts named <task>-paper, e.g. "
                              "cnn_mnist3-paper_10pc)")  # fmt: skip
    if with_dir:
        add_paper_subsets_dir(group or p)


def add_paper_subsets_dir(p) -> None:
    p.add_argument("--paper_subsets_dir", action=_ExportDir, default=None,
                   help=f"--subsets paper: the data/ folder of a clone of {PAPER_REPO} (holding mnist3/ and "
                   f"cifar10/); default ${PAPER_SUBSETS_ENV}")  # fmt: skip


def add_data_root(p) -> None:
    p.add_argument("--data_root", default=None,
                   help=f"folder of the datasets (MNIST/raw, cifar-10-batches-py, or a plug-in task's own); default "
                   f"${DATA_ROOT_ENV}, else ./data")  # fmt: skip


def add_common_args(p: Parser, *, num_per_class: bool = True, seed_id: bool = True) -> None:
    """The flags common to every step (../shared/DESIGN.md)."""
    add_task(p)
    if num_per_class:
        add_num_per_class(p)
    if seed_id:
        p.add_argument("--seed_id", type=int, default=None, help="line K (0-based) of seeds.txt; default: every seed")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    add_data_root(p)
    p.add_argument(
        "--out_root",
        default=None,
        help="root of the artifact folders (models/, tda_scores/, retrains/, self_influence/, results/); default: the repository",
    )
    p.add_argument("--overwrite", action="store_true", help="redo work whose outputs already exist")
