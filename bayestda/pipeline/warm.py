"""Warm task starts: each task runs in its own process, forked from a server that has already imported torch.

A fresh `python tda_cnn_scripts/gd.py ...` spends seconds importing torch, torchvision (which pulls in
torch._dynamo) and the package, and the statistics steps more (scipy, pandas, seaborn); over the 60-odd
tasks of an experiment that is minutes (BENCHMARKS.md). Here a multiprocessing "forkserver" imports them once; every task is
then a fork of it that runs the step script as `python script.py` would (`runpy`, `__main__`, its argv), with
its own environment, thread budget and log. Each task still has its own process, so a crash, a leak or a
CUDA context stays with it. The server never touches CUDA or runs a torch op, so forking it is safe.

The server reports each task's exit status over a pipe; under load CPython's forkserver can lose it, and the
runner then sees 255 for a task that succeeded (CPython issue #140867). So a task also writes the status it exits
with to a file beside its log (`status_file`), which the runner reads when the server reports 255.

A fork runs the code the server imported, and imports anything else from disk: if the package changes during a run
(a `git pull`), the two would mix. So the runner stamps the code when the server starts (`code_stamp`) and starts
every later task cold once the stamp has changed.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import sys
import traceback
from pathlib import Path

from ..core.lifeline import die_with_parent

# What every CNN step imports; the ViT steps import transformers and peft themselves (small next to their work).
PRELOAD = (
    "bayestda.pipeline.server_lifeline",
    "torch",
    "torchvision",
    "bayestda.methods.cli",
    "bayestda.runs.ensemble",
    "bayestda.analysis.results",
    "bayestda.analysis.cli",
    "bayestda.analysis.plots",
)
THREAD_VAR = "OMP_NUM_THREADS"
_REPO = Path(__file__).resolve().parents[2]
CODE = [(_REPO, "bayestda/**/*.py"), (_REPO, "*.py"), (_REPO, "tda_*_scripts/*.py")]  # the package and the steps


def code_stamp() -> tuple[int, int]:
    """(number, newest modification time) of the Python files in `CODE` ((folder, glob) pairs)."""
    times = [p.stat().st_mtime_ns for root, pattern in CODE for p in root.glob(pattern)]
    return len(times), max(times, default=0)


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def _redirect_output(log: str) -> None:
    """stdout and stderr (Python's and the C library's) appended to `log`, unbuffered like PYTHONUNBUFFERED."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False), write_through=True)


def status_file(log: str) -> Path:
    """Where a warm task writes the exit status it ends with."""
    return Path(f"{log}.status")


def _exit_status(exc: SystemExit) -> int:
    """The status `sys.exit(code)` gives: 0 for None, the code for an integer, 1 for anything else (a message)."""
    return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1


def _run_task(argv: list[str], env: dict[str, str], log: str, cwd: str) -> None:
    """In the forked process: what `python *argv` would do, with `env` added to the environment."""
    os.setpgid(0, 0)  # its own process group, with any workers it starts, so a stopped run can end them all
    die_with_parent(os.getppid())  # the server ends with the runner (EOF on its pipe), and the task with the server
    _redirect_output(log)
    os.environ.update(env)  # before anything reads them: CUDA_VISIBLE_DEVICES is read when CUDA starts
    os.chdir(cwd)
    import torch

    if THREAD_VAR in env:  # the OpenMP runtime read the variable when the server loaded it: set it again
        torch.set_num_threads(int(env[THREAD_VAR]))
    code = 0
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            sys.path[0] = str(Path(argv[0]).resolve().parent)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = _exit_status(exc)
        raise
    except BaseException:  # as the interpreter would: the traceback on stderr, exit status 1
        code = 1
        traceback.print_exc()
        raise SystemExit(1) from None
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        status_file(log).write_text(str(code))


def start_server() -> None:
    """Start the server now, from this (the main) thread: it gets SIGTERM when the thread that started it ends."""
    _context()
    multiprocessing.forkserver.ensure_running()


def start_warm(argv: list[str], env: dict[str, str], log: str, cwd: str):
    """Start `python *argv` as a fork of the preloaded server; `.join()` it, then read `.exitcode` (−N: signal N)."""
    process = _context().Process(target=_run_task, args=(argv, env, log, cwd), daemon=False)
    process.start()
    return process
