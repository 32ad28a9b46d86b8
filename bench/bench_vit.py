#!/usr/bin/env python
"""Benchmark ViT + LoRA end to end: fine-tuning, then GD/GC and IF on every checkpoint of one seed.

Setting: MNIST3-10pc (30 train × 900 test), ViT-B/16 with LoRA r=16 on query/value plus the classifier
(~600k trainable parameters). No weights can be downloaded here, so `--config base` saves a randomly initialised
ViT-B/16 (ViTConfig() defaults: 224×224, patch 16, 12 layers, hidden 768) with save_pretrained and loads it
through the same from_pretrained path as the real google/vit-base-patch16-224-in21k. Pass --model_name_or_path
to use real weights. `--config tiny` (2 layers, hidden 32, 32×32) is a CPU smoke run of this script.

For each stage it prints the wall time, the throughput and, on GPU, the peak memory. Grad-Dot is also timed
against its slow reference, a per-sample autograd loop (timed on a few samples and scaled linearly; said so).
`loo-scratch` runs the full retrain and the first `--loo_retrains - 1` leave-one-out retrains of the seed
(each a whole fine-tune from the seed's initialisation, one at a time: the ViT's dropout cannot be stacked) and
scales their time to the seed's n + 1 retrains (said so).

usage: python bench/bench_vit.py [--config base|tiny] [--device cuda] [--precision bf16] [--epochs 15]
                                 [--methods gd,gc,if-paper,loo-scratch] [--loo_retrains 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.artifacts.checkpoints import load_checkpoint
from bayestda.core.allocator import retain_freed_memory
from bayestda.core.cli import resolve_device
from bayestda.core.paths import REPO_ROOT, checkpoint_file, resolve_data_root, seed_model_dir
from bayestda.data.subsets import load_subset
from bayestda.methods import registry
from bayestda.methods.runner import run_method
from bayestda.models import families
from bayestda.models.func import FunctionalModel
from bayestda.runs import retrains
from bayestda.runs.ensemble import EnsembleSpec, train_ensemble
from bayestda.runs.samples import load_seed_samples
from bayestda.training.recipe import RecipeOptions

CONFIGS = {
    "base": {},  # ViTConfig() defaults are ViT-B/16 at 224×224
    "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64},
}  # fmt: skip


def save_random_vit(path: Path, name: str) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(**CONFIGS[name])
    ViTForImageClassification(config).save_pretrained(path)
    size = {"height": config.image_size, "width": config.image_size}
    ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return str(path)


class Stage:
    """Wall time and (CUDA) peak memory of one stage."""

    def __init__(self, name: str, device: torch.device, items: int, unit: str):
        self.name, self.device, self.items, self.unit = name, device, items, unit

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        mem = (
            f"   peak {torch.cuda.max_memory_allocated(self.device) / 2**30:6.2f} GiB"
            if self.device.type == "cuda"
            else ""
        )
        rate = self.items / self.seconds
        print(f"{self.name:38s} {self.seconds:9.2f} s   {rate:10.1f} {self.unit}/s{mem}", flush=True)


def per_sample_loop_seconds(model, data, k: int, device) -> float:
    """The slow reference for GD/GC: one autograd.grad call per sample, for k samples."""
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    for i in range(k):
        loss = F.cross_entropy(model(data.x[i : i + 1].to(device)), data.y[i : i + 1].to(device))
        torch.autograd.grad(loss, params)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def loo_scratch_seconds(out_root: Path, data_root: Path, device, n_train: int, k: int) -> float:
    """Time k LOO-scratch retrains of seed 0 through step 2's own code; print them scaled to all n + 1."""
    samples = load_seed_samples("vit", "mnist3", 10, 0, out_root, data_root)
    ctx = retrains.retrain_context(samples, device)
    jobs = [retrains.Retrain(None, zero_weight=False)] + [retrains.Retrain(j, zero_weight=False) for j in range(k - 1)]
    with Stage(f"loo-scratch ({k} of {n_train + 1} retrains)", device, k, "retrain") as stage:
        retrains.run_retrains(ctx, jobs, workers=1, desc="loo-scratch", stack=1)
    total = stage.seconds * (n_train + 1) / k
    print(f"{'loo-scratch: all retrains of a seed':38s} {total:9.2f} s   (scaled from {k})")
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="base", choices=sorted(CONFIGS), help="random backbone to save and load")
    p.add_argument("--model_name_or_path", default=None, help="a real backbone instead of a random one")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="training autocast (GPU)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument(
        "--methods", default="gd,gc,if-paper", help="comma-separated: gd, gc, if-paper, if-ggn, if-cg, ats, loo-scratch"
    )
    p.add_argument("--chunk", type=int, default=families.get("vit").chunk)
    p.add_argument("--hvp_chunk", type=int, default=families.get("vit").hvp_chunk)
    p.add_argument("--loo_retrains", type=int, default=3, help="loo-scratch: retrains timed (the full one included)")
    p.add_argument("--data_root", default=None)
    args = p.parse_args()
    retain_freed_memory()  # as the step scripts do (cli.run)
    device = resolve_device(args.device)
    data_root = resolve_data_root(args.data_root)
    name = (
        "cuda " + torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}; precision {args.precision}; config {args.config}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone = args.model_name_or_path or save_random_vit(tmp / "backbone", args.config)
        spec = EnsembleSpec("mnist3", 10, "vit", recipe=RecipeOptions(epochs=args.epochs), model_name_or_path=backbone,
                            precision=args.precision)  # fmt: skip
        train = load_subset("mnist3", "train", 10, data_root, REPO_ROOT, pixels=True)
        test = load_subset("mnist3", "test", None, data_root, REPO_ROOT, pixels=True)
        # every epoch trains on 30 images and evaluates the 900 test images
        with Stage(f"fine-tune ({args.epochs} epochs)", device, args.epochs * (len(train) + len(test)), "img"):
            metrics = train_ensemble(spec, [0], data_root, tmp, device)[0]
        print(f"  test accuracy after {args.epochs} epochs: {metrics['final_test_acc']:.1f}%")
        model, _ = load_checkpoint(checkpoint_file(seed_model_dir(tmp, "vit", "mnist3", 10, 0), args.epochs))
        model = model.to(device)
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"  trainable parameters: {n_trainable:,}")

        memory = {"chunk": args.chunk, "hvp_chunk": args.hvp_chunk}
        options = {  # every IF solver in float32 here; CG to 1e-5, what float32 reaches
            "if-paper": {"dtype": "float32", "diagnostics": False},
            "if-ggn": {"dtype": "float32"},
            "if-cg": {"dtype": "float32", "tol": 1e-5, "max_iter": 100},
        }
        pairs = 5 * len(train) * len(test)
        timings = {}
        for method in args.methods.split(","):
            if method == "loo-scratch":
                timings[method] = loo_scratch_seconds(tmp, data_root, device, len(train), args.loo_retrains)
                continue
            with Stage(f"{method} (5 checkpoints, all pairs)", device, pairs, "pair") as stage:
                m = registry.get(method)
                fields = {f for f in m.options.__dataclass_fields__}
                given = {k: v for k, v in {**options.get(method, {}), **memory}.items() if k in fields}
                opts = dataclasses.replace(m.default_options(method), **given)
                run_method(method, "vit", "mnist3", 10, [0], tmp, data_root, device, opts)
            timings[method] = stage.seconds
        if "gd" in timings:
            k = 8
            ref = (
                per_sample_loop_seconds(FunctionalModel(model).model, train, k, device)
                * 5
                * (len(train) + len(test))
                / k
            )
            print(f"{'gd: per-sample autograd loop (scaled)':38s} {ref:9.2f} s   (timed on {k} samples)"
                  f"   speed-up ×{ref / timings['gd']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
