"""Child processes that end with their parent, even when the parent dies from SIGKILL.

A killed runner cannot stop its tasks, and a killed LOO step cannot stop its workers: without this they would
keep running, and writing, with nobody to wait for them. Each child therefore asks to be sent SIGTERM (handled
as Ctrl-C by `cli.run`, so temp files are removed) when its parent dies: on Linux through the kernel's
parent-death signal (prctl PR_SET_PDEATHSIG), elsewhere through a watchdog thread that polls the parent.

The runner passes its pid to a task it starts as a fresh interpreter in `$BAYESTDA_PARENT_PID`; `cli.run`
then calls `die_with_parent`. Warm tasks (`pipeline.warm`) and LOO's worker processes call it themselves.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_PID_ENV = "BAYESTDA_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_INTERVAL_S = 1.0


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Get `sig` when the process `parent_pid` (this one's parent) dies; at once if it is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            _start_watchdog(parent_pid, sig)
    else:
        _start_watchdog(parent_pid, sig)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)


def die_with_runner() -> None:
    """In a step script: end with the runner that started it, if one did (`$BAYESTDA_PARENT_PID`)."""
    pid = os.environ.pop(PARENT_PID_ENV, None)  # popped: this process's own children have another parent
    if pid:
        die_with_parent(int(pid))


def _start_watchdog(parent_pid: int, sig: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_INTERVAL_S)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
