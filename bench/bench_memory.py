#!/usr/bin/env python
"""Peak memory of each TDA method on one posterior sample of an experiment (the budget: ≤ 4 GiB for any CNN experiment).

Each method runs in a fresh process on the last checkpoint of one seed, through the same scorer as step 2
(`bayestda.methods.runner`), and the process reports its peak resident memory (with its worker processes).
Memory does not grow with the number of LiSSA steps, CG iterations or LOO retrains, so each can be cut short to
keep the run quick (`--lissa_steps`, `--cg_iters`, `--loo_retrains`); the output says when they were. Needs the
seed trained.

usage: python bench/bench_memory.py --task cifar10 --num_per_class 50 [--seed_id 0] [--methods gd,ats,if-paper,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import seed_bench

METHODS = ("gd", "gc", "ats", "if-paper", "if-ggn", "if-cg", "if-ekfac", "trak", "loo-scratch", "loo-paper")


def step_options(method: str, args):
    """The options step 2 would use for `method` with its default flags (dtype, chunks, damping, workers...)."""
    from bayestda.methods.cli import parse_method_args

    family, _, variant = method.partition("-")
    flag = {"if": ["--solver", variant], "loo": ["--protocol", variant]}.get(family, [])
    argv = ["--task", args.task, "--num_per_class", str(args.num_per_class), "--device", "cpu", *flag]
    if args.chunk and family != "loo":
        argv += ["--chunk", str(args.chunk)]
    return parse_method_args("", family, "cnn", argv)[2]


def measure_one(args) -> dict:
    """Run one method on the seed's last checkpoint in this process, through step 2's own code; its peak RSS
    and wall time."""
    import dataclasses

    import torch

    from bayestda.core.allocator import retain_freed_memory
    from bayestda.core.errors import UserError
    from bayestda.core.usage import peak_memory_gib
    from bayestda.methods import influence
    from bayestda.methods.runner import compute
    from bayestda.runs import retrains

    retain_freed_memory()  # as step 2 does (cli.run)
    torch.set_num_threads(args.threads)
    options = step_options(args.method, args)
    samples = seed_bench.seed_samples(args)
    cuts = []
    start = time.perf_counter()
    if args.method.startswith("loo-"):  # a few of the seed's retrains (from its last checkpoint, for continuations)
        protocol = args.method.split("-")[1]
        ctx = retrains.retrain_context(samples, "cpu", from_checkpoints=protocol != "scratch")
        start_at = None if protocol == "scratch" else len(ctx.start_states) - 1
        jobs = [
            retrains.Retrain(j, start=start_at, zero_weight=protocol != "scratch") for j in range(args.loo_retrains)
        ]
        retrains.run_retrains(ctx, jobs, options.workers, desc=args.method)
        total = len(samples.train) + 1 if protocol == "scratch" else len(samples.epochs) * len(samples.train)
        cuts.append(f"{len(jobs)} of {total} retrains, {options['workers']} workers")
    else:
        samples.checkpoints = samples.checkpoints[-1:]
        if args.method == "if-paper" and args.lissa_steps:
            full = influence.lissa_batches
            influence.lissa_batches = lambda train, batch_size: full(train, batch_size)[: args.lissa_steps]
            cuts.append(f"LiSSA cut to {args.lissa_steps} of {len(full(samples.train, 8))} steps")
        if args.method == "if-cg" and args.cg_iters:
            options = dataclasses.replace(options, max_iter=args.cg_iters)
            cuts.append(f"CG cut to {args.cg_iters} iterations")
        try:
            compute(args.method, samples, options, "cpu")
        except UserError:  # a CG cut short has not converged: its memory was measured all the same
            if not args.cg_iters:
                raise
        cuts.append(getattr(options, "dtype", None) or "float32")
    wall = time.perf_counter() - start
    return {
        "method": args.method,
        "peak_rss_gib": peak_memory_gib("cpu")["rss"],
        "wall_s": wall,
        "cut": ", ".join(cuts),
    }


def main() -> None:
    parser = seed_bench.parser(__doc__, task="cifar10", threads=None)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to measure")
    parser.add_argument("--lissa_steps", type=int, default=3,
                        help="if-paper: LiSSA steps to run (0: all); memory is the same at every step")  # fmt: skip
    parser.add_argument("--chunk", type=int, default=0, help="step 2's --chunk (0: its default)")
    parser.add_argument("--cg_iters", type=int, default=0,
                        help="if-cg: CG iterations to run (0: to its tolerance); memory is the same at every one")  # fmt: skip
    parser.add_argument("--loo_retrains", type=int, default=4, help="LOO: retrains to run; each is alike in memory")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per method process (LOO: per worker, 1)")
    parser.add_argument("--method", help=argparse.SUPPRESS)  # internal: measure this one method in this process
    args = parser.parse_args()
    if args.method:
        print(json.dumps(measure_one(args)))
        return
    print(f"{args.model} {args.task} {args.num_per_class}pc, seed_id {args.seed_id}, last checkpoint; one process each")
    print(f"{'method':12s} {'peak RSS GiB':>12s} {'wall s':>8s}  cut short")
    for method in args.methods.split(","):
        row, error = seed_bench.run_alone(__file__, "--method", method)
        if row is None:
            print(f"{method:12s} failed: {error}", flush=True)
            continue
        print(f"{method:12s} {row['peak_rss_gib']:12.2f} {row['wall_s']:8.1f}  {row['cut']}", flush=True)


if __name__ == "__main__":
    main()
