"""Flags shared by every step script, and the wrapper that turns errors into one line for the user."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from . import hints, lifeline
from .allocator import retain_freed_memory
from .data import PAPER_REPO, PAPER_SUBSETS_ENV, SUBSETS, TASKS, task_name
from .errors import UserError
from .paths import DATA_ROOT_ENV, read_seeds


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (except None: the help text says what is used), and the docstring kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.required or action.nargs == 0:  # nargs 0: a switch
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error that points at --help."""

    def __init__(self, description: str, **kwargs):
        super().__init__(description=description, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str):
        message = re.sub(r"^argument (\S+): must be", r"\1 must be", message)  # `at_least`'s: "--epochs must be ..."
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """Parsed flags; with `--subsets` (`add_subsets_args`), `task` is the task's artifact name (`data.task_name`).

        The location flags are kept for the commands that error messages suggest (`hints`)."""
        ns = super().parse_args(args, namespace)
        hints.remember(ns)
        if getattr(ns, "subsets", None) and getattr(ns, "task", None) in TASKS:
            ns.task = task_name(ns.task, ns.subsets)
        return ns


def at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer no smaller than `low`, else a one-line flag error (never clamped)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


class _ExportDir(argparse.Action):
    """Put the folder in the environment, where the data loader and every process this one starts find it."""

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[PAPER_SUBSETS_ENV] = str(Path(values).resolve())
        setattr(namespace, self.dest, values)


def add_subsets_args(p, with_dir: bool = True) -> None:
    """--subsets and, for scripts that read the images, --paper_subsets_dir (`data`: which images a task uses)."""
    p.add_argument("--subsets", default=SUBSETS[0], choices=SUBSETS,
                   help="nested: this package's balanced, nested index files (data/<task>/); paper: the original "
                   "code's own files, as it used them (artifacts named <task>-paper, e.g. cnn_mnist3-paper_10pc)")  # fmt: skip
    if with_dir:
        add_paper_subsets_dir(p)


def add_paper_subsets_dir(p) -> None:
    p.add_argument("--paper_subsets_dir", action=_ExportDir, default=None,
                   help=f"--subsets paper: the data/ folder of a clone of {PAPER_REPO} (holding mnist3/ and "
                   f"cifar10/); default ${PAPER_SUBSETS_ENV}")  # fmt: skip


def add_common_args(p: argparse.ArgumentParser, *, num_per_class: bool = True, seed_id: bool = True) -> None:
    """The flags common to every step (../shared/DESIGN.md)."""
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="mnist3 (digits 0, 1, 2) or cifar10")
    add_subsets_args(p)
    if num_per_class:
        p.add_argument("--num_per_class", type=at_least(1), required=True, help="training images per class (10..60)")
    if seed_id:
        p.add_argument("--seed_id", type=int, default=None, help="line K (0-based) of seeds.txt; default: every seed")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--data_root",
        default=None,
        help=f"folder holding MNIST/raw and cifar-10-batches-py; default ${DATA_ROOT_ENV}, else ./data",
    )
    p.add_argument(
        "--out_root",
        default=None,
        help="root of the artifact folders (models/, tda_scores/, retrains/, self_influence/, results/); default: the repository",
    )
    p.add_argument("--overwrite", action="store_true", help="redo work whose outputs already exist")


class _SeedIds(argparse.Action):
    """--seed_ids K [K ...]: checked against seeds.txt, duplicates dropped (in order)."""

    def __call__(self, parser, namespace, values, option_string=None):
        n = len(read_seeds())
        if bad := [k for k in values if not 0 <= k < n]:
            parser.error(f"--seed_ids {bad} out of range: seeds.txt has {n} seeds, so use 0..{n - 1}")
        setattr(namespace, self.dest, list(dict.fromkeys(values)))


class _Renamed(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now --seed_ids: 0-based lines of seeds.txt, as --seed_id in steps 1 and 2")


def add_seed_ids(p: argparse.ArgumentParser, group=None, what: str = "to use") -> None:
    """--seed_ids, the one way to pick several seeds in every script: 0-based lines of seeds.txt, as --seed_id."""
    group = group or p
    group.add_argument("--seed_ids", type=int, nargs="+", action=_SeedIds, default=list(range(len(read_seeds()))),
                       help=f"seed_ids {what}: 0-based lines of seeds.txt (as --seed_id); default: every seed")  # fmt: skip
    group.add_argument("--seeds", nargs="*", action=_Renamed, help=argparse.SUPPRESS)


def available_cores() -> int:
    """CPU cores this process may run on: the default for worker processes and parallel jobs."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


ALLOW_TF32_ENV = "BAYESTDA_ALLOW_TF32"


def set_fp32_precision() -> str:
    """IEEE float32 for cuDNN convolutions and CUDA matmuls, unless `$BAYESTDA_ALLOW_TF32=1`; returns which.

    torch lets cuDNN convolutions use TF32 (a 10-bit mantissa, ~1e-3 relative error) on Ampere and newer
    GPUs by default. A LOO difference at 50 per class is ~1e-5 of the loss and CG solves to 1e-6, so TF32
    would swamp them, and GPU scores would not match CPU ones. The CPU computes in IEEE float32 anyway.
    """
    precision = "tf32" if os.environ.get(ALLOW_TF32_ENV, "") == "1" else "ieee"
    # The root flag does not override a child flag that was set before, so set each one.
    for flags in (torch.backends, torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul):
        flags.fp32_precision = precision
    return precision


def resolve_device(name: str) -> torch.device:
    """The `--device` flag as a torch device; also fixes the float32 precision (`set_fp32_precision`)."""
    set_fp32_precision()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def _interrupt(signum, frame):
    raise KeyboardInterrupt


USER_ERROR_EXIT = 2  # a UserError, as argparse's own errors: deterministic, so the runner does not retry it


def run(main: Callable[[], object]) -> None:
    """Run a script's main: a UserError becomes `error: ...` on stderr and exit status 2 (`USER_ERROR_EXIT`).

    SIGTERM (`kill`, a cancelled Slurm job, an interrupted runner) is handled like Ctrl-C, so that temp files
    are removed, and a runner stops the tasks it started, before the exit. A task started by a runner also
    gets SIGTERM when the runner dies (`lifeline`).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    lifeline.die_with_runner()
    retain_freed_memory()  # bit-identical results, far fewer page faults: LOO and IF-paper faster (BENCHMARKS.md)
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, rerun to continue", file=sys.stderr)
        sys.exit(130)
