#!/usr/bin/env python
"""Benchmark the TDA methods on one checkpoint against their slow references, timed in the same run.

Setting (issue): MNIST3-50pc, 2-layer CNN (225k parameters), 150 train × 900 test pairs, this CPU.
Slow references that would take minutes are timed on a subset and scaled linearly; the output says so.
Needs a trained seed: python train_cnn.py --task mnist3 --num_per_class 50 --seed_id 0

usage: python bench/bench_methods.py [--only gd,ats,if,loo] [--loo_retrains 8] [--malloc_defaults]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.artifacts.checkpoints import load_checkpoint, read_checkpoint
from bayestda.core.allocator import DEFAULTS_ENV, retain_freed_memory
from bayestda.core.paths import REPO_ROOT, checkpoint_file, resolve_data_root, seed_model_dir
from bayestda.core.usage import peak_memory_gib
from bayestda.data.subsets import load_subset
from bayestda.methods import ats, influence
from bayestda.methods.grad_similarity import grad_dot_and_cos
from bayestda.models import families
from bayestda.models.func import FunctionalModel
from bayestda.training.loop import batch_orders
from bayestda.training.recipe import TrainConfig


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def report(name, fast_s, ref_s, ref_label, target=None):
    ratio = ref_s / fast_s
    tgt = f"  (target ≤ {target} s: {'met' if fast_s <= target else 'NOT met'})" if target else ""
    print(f"{name:34s} {fast_s:8.2f} s   vs {ref_label}: {ref_s:8.1f} s   speed-up ×{ratio:6.1f}{tgt}", flush=True)


def bench_gd(fm, model, train, test):
    _, fast = timed(lambda: grad_dot_and_cos(fm, train, test))
    _, naive = timed(lambda: (lambda a, b: (a @ b.T, F.normalize(a, dim=1) @ F.normalize(b, dim=1).T))(
        fm.per_sample_grads(train.x, train.y), fm.per_sample_grads(test.x, test.y)))  # fmt: skip
    k = 3  # per-pair loop: k test points × all train points, scaled to 900
    params = list(model.parameters())

    def loop():
        for t in range(k):
            gt = torch.autograd.grad(F.cross_entropy(model(test.x[t : t + 1]), test.y[t : t + 1]), params)
            for j in range(len(train)):
                gj = torch.autograd.grad(F.cross_entropy(model(train.x[j : j + 1]), train.y[j : j + 1]), params)
                dot = sum((a * b).sum() for a, b in zip(gj, gt, strict=True))
                _ = dot / (
                    torch.sqrt(sum(a.square().sum() for a in gj)) * torch.sqrt(sum(b.square().sum() for b in gt))
                )

    _, loop_s = timed(loop)
    report("GD+GC, 135,000 pairs", fast, naive, "naive vmap (dense grads)", target=3)
    report("GD+GC, 135,000 pairs", fast, loop_s * len(test) / k, f"per-pair loop (×{len(test) // k} of {k} test pts)")


def bench_ats(fm, model, train, test, cfg):
    _, fast = timed(lambda: ats.ats_scores(fm, train, test, TrainConfig.from_config(cfg)))
    k = 10

    def loop():
        with torch.no_grad():
            base = F.cross_entropy(model(test.x), test.y, reduction="none")
        for j in range(k):
            m = copy.deepcopy(model)
            opt = torch.optim.Adam(m.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
            F.cross_entropy(m(train.x[j : j + 1]), train.y[j : j + 1]).backward()
            opt.step()
            with torch.no_grad():
                _ = F.cross_entropy(m.eval()(test.x), test.y, reduction="none") - base

    _, loop_s = timed(loop)
    report(
        "ATS, 135,000 pairs",
        fast,
        loop_s * len(train) / k,
        f"Adam-step loop (×{len(train) // k} of {k} train pts)",
        target=20,
    )


def bench_if(fm, model, train, test):
    _, fast = timed(lambda: influence.if_paper(fm, train, test))
    k = 2  # the recursion per test point, as FastIF runs it
    params = list(model.parameters())

    def per_test():
        for t in range(k):
            v = torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(F.cross_entropy(model(test.x[t : t + 1]), test.y[t : t + 1]), params)
                ]
            )
            h = v.clone()
            for lo in range(0, len(train), 8):
                loss = F.cross_entropy(model(train.x[lo : lo + 8]), train.y[lo : lo + 8])
                flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
                hvp = torch.cat([g.reshape(-1) for g in torch.autograd.grad(flat, params, grad_outputs=h)])
                h = (v + (1 - 5e-3) * h - hvp / 1e4).detach()

    _, ref = timed(per_test)
    report(
        "IF paper (LiSSA), 135,000 pairs",
        fast,
        ref * len(test) / k,
        f"per-test recursion (×{len(test) // k} of {k})",
        target=30,
    )
    fm64 = FunctionalModel(copy.deepcopy(model).double())
    cast = lambda s: type(s)(s.x.double(), s.y, s.idx)  # noqa: E731
    _, ggn64 = timed(lambda: influence.if_ggn(fm64, cast(train), cast(test), 0.01))
    _, ggn32 = timed(lambda: influence.if_ggn(fm, train, test, 0.01))
    report("IF ggn (Woodbury, float64)", ggn64, ref * len(test) / k, "paper's per-test recursion", target=30)
    print(f"{'IF ggn (Woodbury, float32)':34s} {ggn32:8.2f} s", flush=True)


def bench_loo(seed_dir, train, test, retrains: int, workers: int):
    ckpt = read_checkpoint(checkpoint_file(seed_dir, 15))
    cfg = ckpt["config"]
    tc = TrainConfig(epochs=cfg["epochs"])
    ctx = retrains.RetrainContext(cfg, train, test, tc, batch_orders(len(train), tc.epochs, cfg["batch_seed"]),
                             [], eval_epochs=tuple(range(tc.epochs - 4, tc.epochs + 1)))  # fmt: skip
    jobs = [retrains.Retrain(None, zero_weight=False)] + [
        retrains.Retrain(j, zero_weight=False) for j in range(len(train))
    ]
    _, fast = timed(lambda: retrains.run_retrains(ctx, jobs, workers, "LOO scratch"))

    def eager(k):  # the obvious loop: one process, default threads, default layout, a full test pass per kept epoch
        for j in range(k):
            model = families.init(cfg)
            opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
            for e, order in enumerate(ctx.orders, 1):
                model.train()
                for b in order.split(32):
                    b = b[b != j]
                    opt.zero_grad()
                    F.cross_entropy(model(train.x[b]), train.y[b]).backward()
                    opt.step()
                if e in ctx.eval_epochs:
                    with torch.no_grad():
                        F.cross_entropy(model.eval()(test.x), test.y, reduction="none")

    _, ref = timed(lambda: eager(retrains))
    report(f"LOO scratch, 151 retrains ({workers} workers)", fast, ref * len(jobs) / retrains,
           f"sequential eager loop (×{len(jobs) / retrains:.0f} of {retrains})", target=90)  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="gd,ats,if,loo", help="comma-separated subset of gd,ats,if,loo")
    p.add_argument("--loo_retrains", type=int, default=8, help="retrains the slow LOO reference is timed on")
    p.add_argument("--workers", type=int, default=2, help="LOO worker processes")
    p.add_argument("--data_root", default=None)
    p.add_argument("--malloc_defaults", action="store_true",
                   help="keep glibc's malloc defaults instead of bayestda.core.allocator's settings")  # fmt: skip
    args = p.parse_args()
    if args.malloc_defaults:
        os.environ[DEFAULTS_ENV] = "1"  # LOO's worker processes inherit it
    malloc = "bayestda.core.allocator settings" if retain_freed_memory() else "glibc malloc defaults"
    torch.manual_seed(0)
    data_root = resolve_data_root(args.data_root)
    train = load_subset("mnist3", "train", 50, data_root, REPO_ROOT)
    test = load_subset("mnist3", "test", None, data_root, REPO_ROOT)
    seed_dir = seed_model_dir(REPO_ROOT, "cnn", "mnist3", 50, 0)
    model, cfg = load_checkpoint(checkpoint_file(seed_dir, 15))
    fm = FunctionalModel(model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MNIST3-50pc seed 0 epoch 15, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {malloc}", flush=True)  # fmt: skip
    only = set(args.only.split(","))
    if "gd" in only:
        bench_gd(fm, model, train, test)
    if "ats" in only:
        bench_ats(fm, model, train, test, cfg)
    if "if" in only:
        bench_if(fm, model, train, test)
    if "loo" in only:
        bench_loo(seed_dir, train, test, args.loo_retrains, args.workers)
    print(f"peak resident memory: {peak_memory_gib('cpu')['rss']:.2f} GiB (largest of this process and its workers)")


if __name__ == "__main__":
    main()
