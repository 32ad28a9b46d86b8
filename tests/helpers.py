"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def one_line_error(proc, *needles):
    """A step script failed with exactly one line on stderr, which names every needle."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@contextmanager
def single_thread():
    """One torch thread, as every LOO retrain runs: CPU kernels give other last bits with other thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
