"""Flags shared by every step script, and the wrapper that turns errors into one line for the user."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Callable

import torch

from . import hints, lifeline, plugins
from .allocator import retain_freed_memory
from .errors import UserError
from .options import typed
from .paths import read_seeds, resolve_out_root, split_experiment_name


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (except None: the help text says what is used), and the docstring kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.required or action.nargs == 0:  # nargs 0: a switch
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error that points at --help, and plug-ins (`plugins`).

    Every script takes `--plugin PATH_OR_MODULE` (repeatable). The plug-ins on the command line are loaded before
    the flags are declared, so that `--help` lists their tasks, families and methods; after parsing, those that the
    named experiment's runs recorded are loaded too (`plugins.load_recorded_runs`), then the `checks` that
    flag helpers added (`after_parse`) validate the flags that name registered things. A `UserError` raised there
    is a flag error: one line, exit status 2.
    """

    def __init__(self, description: str, **kwargs):
        super().__init__(description=description, formatter_class=HelpFormatter, **kwargs)
        self._checks: list[Callable[[argparse.Namespace], None]] = []
        self.add_argument(plugins.FLAG, action="append", default=[], metavar="PATH_OR_MODULE",
                          help="a plug-in to load first: a .py file or an importable module that declares tasks, "
                          "model families or methods (repeatable; see the README, 'Your own model and data')")  # fmt: skip
        self.load_plugins(sys.argv[1:])

    def load_plugins(self, argv: list[str]) -> None:
        """Load the `--plugin`s of a command line; one that cannot be loaded is a flag error."""
        try:
            plugins.load_all(plugins.from_argv(argv))
        except UserError as exc:
            self.error(str(exc))

    def after_parse(self, check: Callable[[argparse.Namespace], None]) -> None:
        """Run `check(namespace)` on the parsed flags (after the plug-ins are loaded); it may change them."""
        self._checks.append(check)

    def error(self, message: str):
        message = re.sub(r"^argument (\S+): must be", r"\1 must be", message)  # `at_least`'s: "--epochs must be ..."
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """Parsed flags, checked. The location flags are kept for the commands that error messages suggest
        (`hints`)."""
        self.load_plugins(sys.argv[1:] if args is None else list(args))
        ns = super().parse_args(args, namespace)
        hints.remember(ns)
        try:
            _load_recorded_plugins(ns)
            for check in self._checks:
                check(ns)
        except UserError as exc:
            self.error(str(exc))
        return ns


def _load_recorded_plugins(ns: argparse.Namespace) -> None:
    """The plug-ins recorded by the training runs the flags name (--experiment, or --model/--task/--num_per_class)."""
    experiment = getattr(ns, "experiment", None)
    named = split_experiment_name(experiment) if isinstance(experiment, str) else None
    model, task, size = named or (getattr(ns, k, None) for k in ("model", "task", "num_per_class"))
    if all(isinstance(v, str | int) for v in (model, task, size)):
        plugins.load_recorded_runs(resolve_out_root(getattr(ns, "out_root", None)), model, task, size)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse `type`: an integer no smaller than `low`, else a one-line flag error (never clamped)."""

    def parse(text: str) -> int:
        value = typed(int)(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


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
