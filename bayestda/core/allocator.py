"""Keep freed CPU memory for reuse: glibc malloc settings that spare every step fresh page faults.

torch's CPU tensors come from malloc. With glibc's defaults a freed block of a few MB (a batch's activations)
goes back to the kernel, by munmap or by trimming the heap, so the next step's block of the same size is new
memory that the kernel must fault in and zero, page by page. Two LOO workers on MNIST3-50pc took ≈ 200,000
page faults per retrain that way, and a fifth of their time went to the kernel (BENCHMARKS.md).

`retain_freed_memory` fixes the mmap threshold at its maximum (32 MiB), so blocks below it come from the heap,
and keeps up to 32 MiB of free memory at the top of the heap instead of trimming it. That covers a training
step. Blocks above 32 MiB are still mmapped and returned, so the large buffers of IF and GD are unaffected, and
peak memory stays what it was with the defaults (the ≤ 4 GiB budget of CIFAR10-50pc is tight: keeping 256 MiB
everywhere raised IF-ggn's and IF-cg's peaks by ≈ 0.08 GiB). `keep_freed(nbytes)` keeps more inside one block of
code that churns more per step: LiSSA's HVPs free ≈ 0.2 GB of small blocks per step. `reuse_large_blocks(nbytes)`
goes further inside a loop that frees and reallocates the same large buffers many times (TracIn's Grad-Dot at every
epoch of a run): it serves blocks of every size from the heap and keeps them when freed, so only the loop's first
pass faults its pages in. Its peak memory is the loop's own high-water mark plus whatever the heap fragments.

Only where memory lies changes, not what is computed: results are bit-identical. Every step script applies it
(`cli.run`), as do LOO's worker processes. `$BAYESTDA_MALLOC_DEFAULTS=1` keeps glibc's defaults, for comparison
(`bench/bench_methods.py --malloc_defaults`) or if it ever misbehaves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from contextlib import contextmanager
from functools import cache

DEFAULTS_ENV = "BAYESTDA_MALLOC_DEFAULTS"
# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
DEFAULT_MMAP_MAX = 65536  # glibc's default number of mmapped blocks
MMAP_THRESHOLD = 32 * 2**20  # the largest value glibc accepts on 64-bit systems
# Free memory kept at the heap's top. Larger values cost peak memory at CIFAR10-50pc (module docstring).
TRIM_THRESHOLD = 32 * 2**20

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Apply the settings to this process, once. False where they were not applied: not glibc (macOS, musl),
    or `$BAYESTDA_MALLOC_DEFAULTS=1`."""
    global _applied
    if _applied is None:
        _applied = os.environ.get(DEFAULTS_ENV, "") != "1" and _set_glibc_thresholds()
    return _applied


@contextmanager
def keep_freed(nbytes: int):
    """Within the block, keep up to `nbytes` of free memory at the heap's top; on leaving, go back to
    TRIM_THRESHOLD (glibc trims the excess at the next free). Applies `retain_freed_memory` first, so a library
    caller gets the settings too; a no-op where they are off."""
    if not retain_freed_memory():
        yield
        return
    glibc().mallopt(M_TRIM_THRESHOLD, max(nbytes, TRIM_THRESHOLD))
    try:
        yield
    finally:
        glibc().mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


@contextmanager
def reuse_large_blocks(nbytes: int):
    """Within the block, allocate every block from the heap (no mmap) and keep up to `nbytes` of free memory; on
    leaving, large blocks are mmapped again and the excess is trimmed at the next free. A no-op where the settings
    are off (`retain_freed_memory`)."""
    with keep_freed(nbytes):
        if not retain_freed_memory():
            yield
            return
        glibc().mallopt(M_MMAP_MAX, 0)
        try:
            yield
        finally:
            glibc().mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)


@cache
def glibc():
    """The C library when it is glibc (which has mallopt), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def _set_glibc_thresholds() -> bool:
    libc = glibc()
    if libc is None:
        return False
    # Setting either threshold turns off glibc's dynamic mmap threshold; both are needed (BENCHMARKS.md).
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
