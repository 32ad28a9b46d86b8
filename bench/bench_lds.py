#!/usr/bin/env python
"""The LDS ground truth's retrains (`retrain_subsets.py`) against LOO-scratch on one seed (the issue's target: the
retrains for MNIST3-50pc, 50 subsets × 10 seeds, in ≤ 15 min on 2 CPU cores).

Each runs a whole seed in a fresh process through its step's own options, on the cores given (`--threads`: worker
processes of one thread each), and reports its wall time and peak resident memory; then the time for every seed of
seeds.txt at that rate. Needs the seed trained (step 1).

usage: python bench/bench_lds.py --task mnist3 --num_per_class 50 [--lds_subsets 50] [--seed_id 0] [--out_root DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import seed_bench

JOBS = ("loo-scratch", "lds")


def measure_one(args) -> dict:
    """One job on the seed in this process: wall time and peak RSS (with its worker processes)."""
    import torch

    from bayestda.core.allocator import retain_freed_memory
    from bayestda.core.usage import peak_memory_gib
    from bayestda.methods.cli import parse_method_args
    from bayestda.methods.runner import compute
    from bayestda.runs.subset_retrains import SubsetRetrainOptions, retrain_seed

    retain_freed_memory()  # as every step does (cli.run)
    torch.set_num_threads(1)
    samples = seed_bench.seed_samples(args)
    start = time.perf_counter()
    if args.job == "lds":
        retrain_seed(samples, SubsetRetrainOptions(lds_subsets=args.lds_subsets, workers=args.threads, stack=1), "cpu")
    else:
        argv = ["--model", args.model, "--task", args.task, "--num_per_class", str(args.num_per_class),
                "--device", "cpu", "--protocol", "scratch", "--workers", str(args.threads)]  # fmt: skip
        compute("loo-scratch", samples, parse_method_args("", "loo", args.model, argv)[2], "cpu")
    return {"job": args.job, "wall_s": time.perf_counter() - start, "peak_rss_gib": peak_memory_gib("cpu")["rss"]}


def main() -> None:
    p = seed_bench.parser(__doc__, task="mnist3", threads="cores: worker processes of one thread each")
    p.add_argument("--lds_subsets", type=int, default=50, help="M: subsets retrained per seed")
    p.add_argument("--job", help=argparse.SUPPRESS)  # internal: measure this one job in this process
    args = p.parse_args()
    if args.job:
        print(json.dumps(measure_one(args)))
        return
    from bayestda.core.paths import read_seeds

    print(f"{args.model} {args.task} {args.num_per_class}pc, seed_id {args.seed_id}: {args.lds_subsets} LDS retrains "
          f"(+1 full-data check) against LOO-scratch; one process each, {args.threads} cores")  # fmt: skip
    rows = {}
    for job in JOBS:
        rows[job], error = seed_bench.run_alone(__file__, "--job", job)
        if rows[job] is None:
            sys.exit(f"{job} failed: {error}")
        print(f"{job:12s} {rows[job]['wall_s']:8.1f} s   peak RSS {rows[job]['peak_rss_gib']:.2f} GiB", flush=True)
    seeds = len(read_seeds())
    total = seeds * rows["lds"]["wall_s"]
    print(f"lds / loo-scratch: ×{rows['lds']['wall_s'] / rows['loo-scratch']['wall_s']:.2f}; all {seeds} seeds at this "
          f"rate: {total / 60:.1f} min on {args.threads} cores (the issue's target at MNIST3-50pc: ≤ 15 min on 2)")  # fmt: skip


if __name__ == "__main__":
    main()
