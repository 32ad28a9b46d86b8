#!/usr/bin/env python
"""Benchmark other ways of running one LOO retrain against the package's own, interleaved in the same run.

A LOO retrain (Adam steps on small batches, then the test set's losses) is what LOO `scratch` and the demo's
LOO `paper` spend their time on. This script runs the same retrains of one trained seed, single-threaded as
LOO's workers run them, with each variant below. Rounds alternate the variants, so that the machine's drifts
(±30% on a shared 2-core VM) hit all of them alike. For each variant it prints the best and median seconds per
retrain, the speed-up over `default` from the same run (best against best), and how far its test losses are
from `retrains.run_retrain`'s. A non-zero distance means other bits, so a differently trained model.

Variants:
  default     the package: channels-last CNN, Adam(foreach=True), evaluation in chunks (`retrains.run_retrain`)
  gelu-dense  GELU on the channels-last activations viewed as a dense NHWC tensor. On channels-last tensors
              PyTorch's CPU GELU takes a slower and more exact path; the dense one differs by ≤ 1.2e-6 a value.
  adam-fused  torch.optim.Adam(fused=True)
  compile     torch.compile(model); the compile time is reported separately, not in the per-retrain time
  stack       --stack retrains at once as one ModelStack (vmapped model, grouped convolutions); time per retrain
Variants other than stack combine with "+", e.g. gelu-dense+adam-fused.

Needs a trained seed. The defaults are LOO `scratch` at MNIST3-50pc (the setting of the LOO speed target):
  python train_cnn.py --task mnist3 --num_per_class 50 --seed_id 0
  python bench/bench_retrain_variants.py
and the demo's LOO `paper` continuations at MNIST3-10pc:
  python bench/bench_retrain_variants.py --protocol paper --num_per_class 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.core.allocator import retain_freed_memory
from bayestda.core.errors import UserError
from bayestda.core.paths import REPO_ROOT, resolve_data_root
from bayestda.runs import retrains
from bayestda.runs import samples as samples_mod
from bayestda.training.recipe import make_optimizer

VARIANTS = ("default", "gelu-dense", "adam-fused", "compile", "stack")


def dense_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU of a channels-last activation computed on its memory as a dense NHWC tensor (same layout out)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return F.gelu(x)


class DenseGeluCNN(nn.Module):
    """`models.CNN`'s forward pass with `dense_gelu`; the wrapped CNN's weights are trained."""

    channels_last = True

    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cnn
        for i in range(1, c.num_convs + 1):
            x = c.pool(dense_gelu(getattr(c, f"conv{i}")(x)))
        return c.fc2(F.gelu(c.fc1(x.flatten(1))))


def retrain(ctx: retrains.RetrainContext, job: retrains.Retrain, variant: str) -> torch.Tensor:
    """`retrains.run_retrain` with the variant's model and optimizer: [len(eval_epochs), n_test] test losses."""
    parts = set(variant.split("+"))
    model = retrains.start_model(ctx, job)
    if "adam-fused" in parts:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=ctx.cfg.lr, weight_decay=ctx.cfg.weight_decay, fused=True)
    else:
        optimizer = make_optimizer(model, ctx.cfg)  # the package's own
    if "gelu-dense" in parts:
        model = DenseGeluCNN(model)
    if "compile" in parts:
        model = torch.compile(model, dynamic=False)
    return retrains.retrain_from(ctx, job, model, optimizer)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mnist3", choices=["mnist3", "cifar10"], help="the trained seed's task")
    p.add_argument("--num_per_class", type=int, default=50, help="the trained seed's training images per class")
    p.add_argument("--seed_id", type=int, default=0, help="line of seeds.txt whose trained run is retrained")
    p.add_argument("--protocol", default="scratch", choices=["scratch", "paper"],
                   help="scratch: from the seed's initialisation, read at the last 5 epochs; paper: continue "
                        "from the last checkpoint with the sample's loss zeroed, read at the end")  # fmt: skip
    p.add_argument("--variants", default="default,gelu-dense,adam-fused,stack",
                   help=f"comma-separated, from {', '.join(VARIANTS)} (compile needs a C++ compiler and ~1 min)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each runs every variant once")
    p.add_argument("--retrains", type=int, default=2, help="retrains per variant and round (samples left out)")
    p.add_argument("--stack", type=int, default=30, help="retrains in the `stack` variant's ModelStack")
    p.add_argument("--data_root", default=None, help="datasets folder (default: $BAYESTDA_DATA_ROOT or ./data)")
    p.add_argument("--out_root", default=str(REPO_ROOT), help="where models/ is read")
    args = p.parse_args()
    variants = list(dict.fromkeys(args.variants.split(",")))
    parts = {part for v in variants for part in v.split("+")}
    if unknown := parts - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if any("+" in v and "stack" in v.split("+") for v in variants):
        p.error("stack does not combine with other variants")
    retain_freed_memory()  # as every step and LOO worker does
    torch.set_num_threads(1)  # as LOO runs each retrain
    seed = int((REPO_ROOT / "seeds.txt").read_text().split()[args.seed_id])
    try:
        samples = samples_mod.load_seed_samples("cnn", args.task, args.num_per_class, seed, Path(args.out_root),
                                           resolve_data_root(args.data_root))  # fmt: skip
    except UserError as err:  # e.g. no trained seed: the message says what to run
        sys.exit(str(err))
    ctx = retrains.retrain_context(samples, torch.device("cpu"), from_checkpoints=args.protocol != "scratch")
    n = len(ctx.train_data)
    scratch = args.protocol == "scratch"
    start = None if scratch else len(ctx.start_states) - 1

    def job(j):
        return retrains.Retrain(j, start=start, zero_weight=not scratch)

    left_out = [round(i * (n - 1) / max(1, args.retrains - 1)) for i in range(args.retrains)]
    print(f"{args.task}-{args.num_per_class}pc seed {seed}, LOO {args.protocol}: {n} train, {len(ctx.test_data)} test, "
          f"{ctx.cfg.epochs} epochs from {'the initialisation' if scratch else 'the last checkpoint'}, test losses at "
          f"epochs {list(ctx.eval_epochs)}; 1 thread; samples left out {left_out}", flush=True)  # fmt: skip

    reference = {j: retrains.run_retrain(ctx, job(j)) for j in left_out}  # the bits every variant is compared with
    if "compile" in parts:
        t = time.perf_counter()
        retrain(ctx, job(left_out[0]), "compile")
        print(f"compile: first retrain (compiling every graph) {time.perf_counter() - t:.1f} s", flush=True)

    times = {v: [] for v in variants}
    dist = dict.fromkeys(variants, 0.0)
    for r in range(args.rounds):
        for v in variants:
            t = time.perf_counter()
            if v == "stack":
                jobs = [job(j % n) for j in range(args.stack)]
                out = dict(zip(range(args.stack), retrains.run_stacked_retrains(ctx, jobs), strict=True))
                count = args.stack
            else:
                out = {j: retrain(ctx, job(j), v) for j in left_out}
                count = len(out)
            times[v].append((time.perf_counter() - t) / count)
            dist[v] = max([dist[v]] + [(out[j] - reference[j]).abs().max().item() for j in left_out if j in out])
        print(f"round {r + 1}: " + ", ".join(f"{v} {times[v][-1]:.3f} s" for v in variants), flush=True)
    base = min(times["default"]) if "default" in variants else None
    print(f"\n{'variant':22s} {'best s':>8s} {'median s':>9s} {'vs default':>11s}   max |Δ test loss| vs default")
    for v in variants:
        ratio = f"×{base / min(times[v]):.2f}" if base else "-"
        print(f"{v:22s} {min(times[v]):8.3f} {statistics.median(times[v]):9.3f} {ratio:>11s}   {dist[v]:.1e}")


if __name__ == "__main__":
    main()
