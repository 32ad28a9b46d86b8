"""Imported first by the warm-start server (`warm.PRELOAD`): the server ends when the runner that started it dies.

The server's tasks end with the server (`warm._run_task`), so a runner killed by SIGKILL leaves nothing running.
Without this the server would outlive the runner: each task holds the pipe whose end-of-file it waits for.
"""

import os

from ..core.lifeline import die_with_parent

die_with_parent(os.getppid())
