#!/usr/bin/env python
"""TRAK on one checkpoint: this package's `trak` against the `traker` library on the same model and data.

Loads the last checkpoint of one trained seed and times (1) `bayestda.methods.trak.trak_scores` with the step's
defaults (Rademacher, k = --proj_dim) and (2) traker 0.3.2 (a test-only dependency, `pip install -r
req-test.txt`) with its CPU projector (`BasicProjector`, Rademacher, the same k), from featurizing the training
set to the final scores. The two use different random matrices, so their scores agree only up to projection
noise: the Pearson correlation of each with the exact-gradient limit (`--projection identity`) is printed beside
the ratio. With k > n and λ = 0, traker inverts the singular k × k matrix ΦᵀΦ (this package solves the n × n
form instead); give both a --damping to compare them there. Needs the seed trained (step 1).

usage: python bench/bench_trak.py --task mnist3 --num_per_class 50 [--model cnn] [--seed_id 0] [--proj_dim 2048]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.core.allocator import retain_freed_memory
from bayestda.methods.trak import Projection, trak_scores
from bayestda.models.func import FunctionalModel
from bench import seed_bench


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1].item()


def traker_scores(model, train, test, proj_dim: int, damping: float, save_dir: str) -> torch.Tensor:
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    n_params = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(grad_dim=n_params, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.rademacher,
                               device="cpu", dtype=torch.float32)  # fmt: skip
    traker = TRAKer(model=model, task="image_classification", train_set_size=len(train), save_dir=save_dir,
                    device="cpu", projector=projector, use_half_precision=False, logging_level=40,
                    lambda_reg=damping * proj_dim / n_params)  # its features: ±1 entries, divided by √P  # fmt: skip
    traker.load_checkpoint(model.state_dict(), model_id=0)
    for lo in range(0, len(train), 128):
        xb, yb = train.x[lo : lo + 128], train.y[lo : lo + 128]
        traker.featurize(batch=(xb, yb), num_samples=len(xb))
    traker.finalize_features()
    traker.start_scoring_checkpoint("bench", model.state_dict(), model_id=0, num_targets=len(test))
    for lo in range(0, len(test), 128):
        xb, yb = test.x[lo : lo + 128], test.y[lo : lo + 128]
        traker.score(batch=(xb, yb), num_samples=len(xb))
    return torch.as_tensor(traker.finalize_scores("bench"))


def main() -> None:
    p = seed_bench.parser(__doc__, task="mnist3", threads="torch threads")
    p.add_argument("--proj_dim", type=int, default=2048, help="k")
    p.add_argument("--damping", type=float, default=0.0, help="λ of both (traker's in its own scale)")
    args = p.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    samples = seed_bench.seed_samples(args)
    samples.checkpoints = samples.checkpoints[-1:]  # the last one
    model = next(iter(samples.models("cpu", torch.float32)))
    train, test = samples.train, samples.test
    n_params = sum(q.numel() for q in model.parameters())
    print(f"{args.model} {args.task} {args.num_per_class}pc seed_id {args.seed_id}, epoch {samples.epochs[-1]}: "
          f"{len(train)} train × {len(test)} test, {n_params:,} parameters, k = {args.proj_dim}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip

    start = time.perf_counter()
    ours = trak_scores(FunctionalModel(model), train, test, Projection("rademacher", args.proj_dim, 0), args.damping)
    t_ours = time.perf_counter() - start
    exact = trak_scores(FunctionalModel(model), train, test, Projection("identity", 0, 0), args.damping)
    print(f"{'bayestda trak':24s} {t_ours:8.2f} s   Pearson with exact gradients {pearson(ours, exact):.3f}")
    try:
        import trak  # noqa: F401
    except ImportError:
        print("traker is not installed (pip install -r req-test.txt): no reference timing")
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        theirs = traker_scores(model, train, test, args.proj_dim, args.damping, tmp)
        t_theirs = time.perf_counter() - start
    print(f"{'traker 0.3.2 (CPU)':24s} {t_theirs:8.2f} s   Pearson with exact gradients {pearson(theirs, exact):.3f}")
    print(f"ratio traker / bayestda: ×{t_theirs / t_ours:.1f};  Pearson(bayestda, traker) {pearson(ours, theirs):.3f}")


if __name__ == "__main__":
    main()
