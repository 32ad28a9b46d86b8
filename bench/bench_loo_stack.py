#!/usr/bin/env python
"""Benchmark stacked LOO retrains (`loo.py --stack K`, the GPU default) against one retrain at a time, same run.

Setting: LOO `scratch` retrains of the 2-layer CNN, or another `--arch` (the seed's initialisation and batch order,
one training sample removed), on a task's training subset, evaluated on its test subset at the last 5 epochs, as
`tda_cnn_scripts/loo.py` runs them. The slow reference (one retrain at a time, in this process) is timed on
`--reference_retrains` retrains and scaled linearly; each stack size is timed on a full stack. The stacks' τ
(test loss without z_j minus test loss of the full retrain) is compared with the reference's on the retrains
they share: float rounding differs, and retraining amplifies it.

usage: python bench/bench_loo_stack.py [--task cifar10] [--num_per_class 50] [--device cuda] [--stacks 32,128,256,501]
       python bench/bench_loo_stack.py --arch logreg --task mnist3 --device cpu --stacks 16,64,151
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.core.allocator import retain_freed_memory
from bayestda.core.cli import resolve_device
from bayestda.runs import retrains
from bench import seed_bench


def timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    seed_bench.add_scratch_retrain_args(p, arch="cnn2", task="cifar10", num_per_class=50)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--stacks", default="32,128,256,501", help="comma-separated stack sizes to time")
    p.add_argument("--reference_retrains", type=int, default=8, help="one-at-a-time retrains timed and scaled")
    args = p.parse_args()
    retain_freed_memory()  # as the step scripts do (cli.run)
    device = resolve_device(args.device)
    ctx, train, test = seed_bench.scratch_retrains(args, device)
    cfg, n = ctx.cfg, len(train)
    jobs = [retrains.Retrain(None, zero_weight=False)] + [retrains.Retrain(j, zero_weight=False) for j in range(n)]
    print(f"{args.arch} {args.task}-{args.num_per_class}pc: {n} train, {len(test)} test, {cfg.epochs} epochs; device {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")  # fmt: skip
    k = args.reference_retrains
    if device.type == "cpu":
        torch.set_num_threads(1)  # as loo.py runs each retrain
    reference, ref_s = timed(device, lambda: [retrains.run_retrain(ctx, job) for job in jobs[:k]])
    per_retrain = ref_s / k
    print(f"one at a time: {per_retrain:.3f} s per retrain -> {per_retrain * len(jobs):8.1f} s for all {len(jobs)}")
    for size in [int(s) for s in args.stacks.split(",")]:
        size = min(size, len(jobs))
        stacked, stack_s = timed(device, lambda size=size: retrains.run_stacked_retrains(ctx, jobs[:size]))
        # τ = L(without z_j) − L(full) of the retrains both runs share, and how far the stack's τ is from the reference's
        tau_ref = torch.stack(reference[1:]) - reference[0]
        tau_stack = torch.stack(stacked[1 : len(reference)]) - stacked[0]
        tau_err = ((tau_stack - tau_ref).norm() / tau_ref.norm()).item()
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
        print(
            f"stack {size:4d}: {stack_s / size:.4f} s per retrain -> {stack_s / size * len(jobs):8.1f} s for all"
            f"   x{per_retrain * size / stack_s:6.1f} vs one at a time; ‖Δτ‖/‖τ‖ {tau_err:.1e}{peak}"
        )


if __name__ == "__main__":
    main()
