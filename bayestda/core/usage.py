"""What a task used: its peak memory, recorded in every artifact it writes, so an experiment's cost is known."""

from __future__ import annotations

import sys

try:
    import resource  # Unix only
except ImportError:  # pragma: no cover
    resource = None

import torch


def peak_memory_gib(device) -> dict:
    """Peak memory of this process so far: resident (with its finished worker processes, e.g. LOO's) and,
    on a GPU, torch's allocations. Recorded in every score file, so an experiment's memory is known."""
    peak = {}
    if resource is not None:
        scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes on macOS, KiB on Linux
        rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        peak["rss"] = round(rss / scale, 3)
    if torch.device(device).type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return peak
