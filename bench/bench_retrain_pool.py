#!/usr/bin/env python
"""Benchmark where a seed's LOO retrains run on a CPU: in a pool of spawned worker processes, or in the step's own
process (`runs.retrains.run_retrains` times the first retrain and skips the pool when the rest would finish before the
workers started, `POOL_START_S`).

Setting: LOO `scratch` retrains (the seed's initialisation and batch order, one training point removed) of an
`--arch` on a task's training subset, as `tda_cnn_scripts/loo.py` runs them. Each of three ways is timed on the same
jobs in the same run: the pool forced (`POOL_START_S = 0`), in this process (`--workers 1`), and the package's choice.
The start of a bare pool of the same workers is timed too; the scores of the three ways are compared bit for bit.

usage: python bench/bench_retrain_pool.py --arch logreg --task mnist3 --num_per_class 10
       python bench/bench_retrain_pool.py --arch cnn2 --task mnist3 --num_per_class 10 --retrains 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.core.allocator import retain_freed_memory
from bayestda.runs import retrains
from bench import seed_bench


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    seed_bench.add_scratch_retrain_args(p, arch="logreg", task="mnist3", num_per_class=10)
    p.add_argument("--retrains", type=int, default=31, help="retrains timed (a seed's LOO-scratch has n + 1)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the pool")
    args = p.parse_args()
    retain_freed_memory()  # as the step scripts do (cli.run)
    ctx, train, _ = seed_bench.scratch_retrains(args)
    jobs = [retrains.Retrain(j, zero_weight=False) for j in range(min(args.retrains, len(train)))]
    print(f"{args.arch} {args.task}-{args.num_per_class}pc: {len(jobs)} retrains of {ctx.cfg.epochs} epochs, "
          f"{args.workers} workers, {os.cpu_count()} cores")  # fmt: skip

    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=retrains._init_worker,
                             initargs=(ctx, os.getpid())) as pool:  # fmt: skip
        _, pool_start = timed(lambda: list(pool.map(abs, range(args.workers))))
    retrains.run_retrains(ctx, jobs[:1], 1, "warm-up")  # one-time costs (the initial model, allocations) out of the way
    here, here_s = timed(lambda: retrains.run_retrains(ctx, jobs, 1, "in this process"))
    saved, retrains.POOL_START_S = retrains.POOL_START_S, 0.0
    pooled, pool_s = timed(lambda: retrains.run_retrains(ctx, jobs, args.workers, "pool"))
    retrains.POOL_START_S = saved
    chosen, chosen_s = timed(lambda: retrains.run_retrains(ctx, jobs, args.workers, "the package's choice"))
    same = all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(here, pooled, chosen, strict=True))
    print(f"a bare pool starts in {pool_start:.2f} s (POOL_START_S = {retrains.POOL_START_S:g} s)")
    print(f"in this process: {here_s:7.2f} s ({here_s / len(jobs):.3f} s per retrain)")
    print(f"pool:            {pool_s:7.2f} s ({pool_s / here_s:.2f} x in this process)")
    print(
        f"package's choice:{chosen_s:7.2f} s ({chosen_s / min(here_s, pool_s):.2f} x the faster); "
        f"scores bit-identical across the three: {same}"
    )


if __name__ == "__main__":
    main()
