#!/usr/bin/env python
"""Unrolled differentiation (`ud`) against LOO-scratch on one seed (the issue's targets: ud ≤ 3 × loo-scratch,
peak ≤ 4 GiB, at MNIST3-50pc), and ud with float64 tangents (`--tangent_dtype float64`) beside it.

Each method runs a whole seed in a fresh process, through step 2's own options and scorer, and reports its wall
time and peak resident memory (LOO's with its worker processes); both use the cores given (`--threads`: ud's
torch threads, LOO's worker processes). Then how far ud, the first-order prediction of the retrain without z_j,
is from that retrain: per checkpoint epoch, the Spearman and Pearson correlation over every (train, test) pair, in
float32 and float64 tangents, and how far the two tangent precisions are apart.
Needs the seed trained (step 1).

usage: python bench/bench_ud.py --task mnist3 --num_per_class 50 [--model cnn] [--seed_id 0] [--out_root DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import seed_bench

METHODS = ("loo-scratch", "ud", "ud-float64")  # ud-float64: ud with --tangent_dtype float64


def measure_one(args) -> dict:
    """Score the seed with one method in this process; wall time, peak RSS, and the scores saved to --save."""
    import torch

    from bayestda.core.allocator import retain_freed_memory
    from bayestda.core.usage import peak_memory_gib
    from bayestda.methods.cli import parse_method_args
    from bayestda.methods.runner import compute

    retain_freed_memory()  # as step 2 does (cli.run)
    torch.set_num_threads(1 if args.method.startswith("loo") else args.threads)
    flags = {"loo-scratch": ["--protocol", "scratch", "--workers", str(args.threads)],
             "ud-float64": ["--tangent_dtype", "float64"]}.get(args.method, [])  # fmt: skip
    argv = ["--model", args.model, "--task", args.task, "--num_per_class", str(args.num_per_class), "--device", "cpu"]
    name = "ud" if args.method.startswith("ud") else args.method
    options = parse_method_args("", name.split("-")[0], args.model, argv + flags)[2]
    samples = seed_bench.seed_samples(args)
    start = time.perf_counter()
    scores, _ = compute(name, samples, options, "cpu")
    wall = time.perf_counter() - start
    torch.save(scores, args.save)
    return {"method": args.method, "wall_s": wall, "peak_rss_gib": peak_memory_gib("cpu")["rss"]}


def agreement(scores: dict) -> list[str]:
    """Per checkpoint epoch: Spearman and Pearson of each ud's τ with loo-scratch's over every pair, and the
    relative distance ‖τ32 − τ64‖ / ‖τ64‖ of the two tangent precisions."""
    from scipy import stats

    rows = []
    epochs = len(scores["loo-scratch"])
    for e, truth in enumerate(scores["loo-scratch"]):
        b = truth.flatten().double().numpy()
        cells = []
        for method in ("ud", "ud-float64"):
            a = scores[method][e].flatten().double().numpy()
            cells.append(f"{method} Spearman {stats.spearmanr(a, b).statistic:.3f}, "
                         f"Pearson {stats.pearsonr(a, b).statistic:.3f}")  # fmt: skip
        f32, f64 = scores["ud"][e].double(), scores["ud-float64"][e].double()
        gap = ((f32 - f64).norm() / f64.norm()).item()
        rows.append(f"  checkpoint {e + 1} of {epochs}: {'; '.join(cells)}; float32 vs float64 tangents {gap:.2e}")
    return rows


def main() -> None:
    p = seed_bench.parser(__doc__, task="mnist3", threads="cores for each method: ud's threads, LOO's workers")
    p.add_argument("--method", help=argparse.SUPPRESS)  # internal: measure this one method in this process
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        print(json.dumps(measure_one(args)))
        return
    import torch

    print(f"{args.model} {args.task} {args.num_per_class}pc, seed_id {args.seed_id}, a whole seed; one process each, "
          f"{args.threads} cores")  # fmt: skip
    rows, scores = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            save = Path(tmp) / f"{method}.pt"
            rows[method], error = seed_bench.run_alone(__file__, "--method", method, "--save", str(save))
            if rows[method] is None:
                sys.exit(f"{method} failed: {error}")
            scores[method] = torch.load(save)
            print(f"{method:12s} {rows[method]['wall_s']:8.1f} s   peak RSS {rows[method]['peak_rss_gib']:.2f} GiB",
                  flush=True)  # fmt: skip
    ratio = rows["ud"]["wall_s"] / rows["loo-scratch"]["wall_s"]
    print(f"ud / loo-scratch: ×{ratio:.2f} (the issue's target: ≤ ×3); ud's peak {rows['ud']['peak_rss_gib']:.2f} GiB "
          "(target: ≤ 4 GiB)")  # fmt: skip
    print(
        f"ud-float64 / ud: ×{rows['ud-float64']['wall_s'] / rows['ud']['wall_s']:.2f}; "
        f"ud-float64 / loo-scratch: ×{rows['ud-float64']['wall_s'] / rows['loo-scratch']['wall_s']:.2f}"
    )
    print("ud against loo-scratch on this seed (its first-order prediction against the retrain):")
    print("\n".join(agreement(scores)))


if __name__ == "__main__":
    main()
