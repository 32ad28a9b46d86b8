"""bayestda.core.allocator: glibc keeps freed blocks for reuse, so training steps stop faulting in fresh pages, and
nothing computed changes."""

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from bayestda.core import allocator
from bayestda.runs import retrains

glibc = pytest.mark.skipif(allocator.glibc() is None, reason="needs glibc's mallopt")

# In a fresh process: 3 warm-up and 20 measured Adam steps of the MNIST CNN at batch 32 (the LOO retrain's step),
# single-threaded, printing the measured steps' minor page faults and a digest of the trained weights.
STEPS = """
import json, resource, sys, torch
from torch.nn import functional as F
from bayestda.core.allocator import retain_freed_memory
from bayestda.models import cnn
from bayestda.core.seeds import seeded_init
from bayestda.training.loop import fast_layout
applied = retain_freed_memory()
torch.set_num_threads(1)
model = seeded_init(0, lambda: cnn.build({"arch": "cnn2", "task": "mnist3"}))
gen = torch.Generator().manual_seed(0)
x = fast_layout(model, torch.randn(32, 1, 28, 28, generator=gen))
y = torch.randint(0, 3, (32,), generator=gen)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-3, foreach=True)
def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
weights = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
print(json.dumps({"applied": applied, "faults": faults, "digest": [weights.sum().item(), weights.square().sum().item(), weights[::997].tolist()]}))
"""


def _steps(defaults: bool) -> dict:
    env = {**os.environ, allocator.DEFAULTS_ENV: "1" if defaults else "0"}
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_retained_memory_stops_page_faults_and_changes_no_bit():
    kept, defaults = _steps(defaults=False), _steps(defaults=True)
    assert kept["applied"] and not defaults["applied"]
    # a step allocates ≈ 11 MB of activations and gradients, ≈ 2,800 pages if each were fresh (glibc's
    # defaults: ≈ 2,300 per step here); kept, a few dozen
    assert kept["faults"] < 20 * 100, kept["faults"]
    assert kept["digest"] == defaults["digest"]  # bit-identical training (floats compared exactly)


def test_defaults_env_turns_it_off():
    env = {**os.environ, allocator.DEFAULTS_ENV: "1"}
    code = "from bayestda.core.allocator import retain_freed_memory as r; print(r())"
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "False"
    )


@glibc
def test_loo_workers_apply_it():
    """LOO's spawned workers are fresh interpreters that never pass through cli.run: their initializer applies it."""
    with ProcessPoolExecutor(
        1, mp_context=get_context("spawn"), initializer=retrains._init_worker, initargs=(None, os.getpid())
    ) as pool:
        assert pool.submit(eval, "__import__('bayestda.core.allocator').core.allocator._applied").result() is True


# `churn(size, count)`: `count` blocks of `size` bytes, all live at once and written, then all freed; the minor page
# faults it took. Raw malloc, not torch tensors: a small allocation that lands above the blocks (a TensorImpl, a
# list) would pin the heap's top and make trimming depend on the layout.
CHURN_SETUP = """
import ctypes, json, resource
from bayestda.core.allocator import glibc, keep_freed, retain_freed_memory, reuse_large_blocks
retain_freed_memory()
libc = glibc()
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def churn(size, count):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in reversed(blocks):
        libc.free(b)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""


def _faults(script: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHURN_SETUP + script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# 200 blocks of 1 MiB leave 200 MiB free at the heap's top: above the 32 MiB kept by default, within the 1 GiB that
# `keep_freed` keeps inside its block.
CHURN = """
churn(2**20, 200)
with keep_freed(2**30):
    churn(2**20, 200)
    inside = churn(2**20, 200)
outside = [churn(2**20, 200), churn(2**20, 200)]
print(json.dumps({"inside": inside, "outside": outside}))
"""


@glibc
def test_keep_freed_keeps_more_inside_its_block_only():
    faults = _faults(CHURN)
    pages = 200 * 2**20 // 4096  # 51,200 pages of 4 KiB: what a churn faults in when nothing is kept
    assert faults["inside"] < pages // 20, faults  # reused
    # the first churn after the block reuses what was kept, then frees it past the default threshold: trimmed,
    # so the second faults the pages in again
    assert faults["outside"][1] > pages // 2, faults


# 3 blocks of 48 MiB, above the 32 MiB mmap threshold: by default each is mmapped on allocation and unmapped on free.
LARGE_CHURN = """
before = churn(48 * 2**20, 3)
with reuse_large_blocks(2**30):
    churn(48 * 2**20, 3)
    inside = churn(48 * 2**20, 3)
outside = [churn(48 * 2**20, 3), churn(48 * 2**20, 3)]
print(json.dumps({"before": before, "inside": inside, "outside": outside}))
"""


@glibc
def test_reuse_large_blocks_keeps_blocks_above_the_mmap_threshold_inside_its_block_only():
    faults = _faults(LARGE_CHURN)
    pages = 3 * 48 * 2**20 // 4096  # 36,864 pages of 4 KiB: a churn of fresh memory
    assert faults["before"] > pages // 2, faults  # mmapped, returned, mmapped again
    assert faults["inside"] < pages // 20, faults  # served from the heap and kept
    assert faults["outside"][1] > pages // 2, faults  # mmapped again after the block
