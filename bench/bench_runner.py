#!/usr/bin/env python
"""Benchmark run_experiment.py's local backend: warm task starts (forked from a process that has imported torch)
against cold ones (a fresh `python script.py` per task, `--cold_start`), timed in the same run.

Both runs do the same experiment from nothing in their own temporary --out_root (subsets, training, the methods,
p-values, correlations), and the bench checks that they wrote identical score files. The default methods are
the cheap ones, where starting a process is a large share of each task; the saving per task is the same for
the expensive ones.

usage: python bench/bench_runner.py [--num_per_class 10] [--methods gd,gc,if-paper] [--num_seeds 10] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bayestda.core.paths import score_file  # noqa: E402


def run(out: Path, args, cold: bool) -> tuple[float, dict]:
    command = [
        sys.executable, "run_experiment.py", "--task", "mnist3", "--num_per_class", str(args.num_per_class),
        "--methods", args.methods, "--seed_ids", *map(str, range(args.num_seeds)), "--jobs", str(args.jobs),
        "--gpus", "none", "--out_root", str(out), *(["--cold_start"] if cold else []),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run_experiment.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    report = json.loads((out / "logs" / f"cnn_mnist3_{args.num_per_class}pc" / "last_run.json").read_text())
    return wall, report["finished"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_per_class", type=int, default=10, help="training images per class")
    p.add_argument("--methods", default="gd,gc,if-paper", help="methods, as run_experiment.py --methods")
    p.add_argument("--num_seeds", type=int, default=10, help="run seed_ids 0..N-1")
    p.add_argument("--jobs", type=int, default=2, help="tasks at once")
    args = p.parse_args()
    if "BAYESTDA_DATA_ROOT" not in os.environ:
        sys.exit("set BAYESTDA_DATA_ROOT to the datasets folder (see README)")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for cold in (True, False):
            out = Path(tmp) / ("cold" if cold else "warm")
            results[cold] = run(out, args, cold)
            wall, tasks = results[cold]
            print(f"{'cold' if cold else 'warm'} starts: {wall:6.1f} s wall, {len(tasks)} tasks, "
                  f"{sum(tasks.values()):6.1f} task-seconds", flush=True)  # fmt: skip
        for method in args.methods.split(","):
            for seed in range(args.num_seeds):
                a, b = (torch.load(score_file(Path(tmp) / d, "cnn", method, "mnist3", args.num_per_class, seed),
                                   weights_only=False)["scores"] for d in ("cold", "warm"))  # fmt: skip
                assert torch.equal(a, b), f"{method} seed {seed}: warm and cold scores differ"
    (cold_wall, cold_tasks), (warm_wall, warm_tasks) = results[True], results[False]
    per_task = (sum(cold_tasks.values()) - sum(warm_tasks.values())) / len(cold_tasks)
    print(f"identical score files; warm/cold speed-up ×{cold_wall / warm_wall:.2f} in wall time, "
          f"{per_task:.1f} s saved per task")  # fmt: skip


if __name__ == "__main__":
    main()
