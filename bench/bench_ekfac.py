#!/usr/bin/env python
"""EK-FAC influence on one checkpoint: this package's `if-ekfac` against kronfluence, and its distance to `if-ggn`.

Loads the last checkpoint of one trained seed and times, after a warm-up call on 8 images, from the raw model to
the final [n, m] scores (factors included):
1. `if-ekfac` as step 2 runs it (the GGN, float32 with float64 eigendecompositions, the family's λ): the issue's
   target; and the same in float64, to show what float32 changes;
2. `if-ekfac --fisher empirical` in float32, and kronfluence 1.0.1 (a test-only dependency, `pip install -r
   req-test.txt`) with `strategy="ekfac"`, `use_empirical_fisher=True`, its default dtypes and the same λ: the
   same quantity, so the scores must agree (the largest difference relative to the largest score is printed);
3. `if-ggn` (the exact damped GGN inverse EK-FAC approximates): the Spearman and relative error of 1. against it.

Memory: the peak resident size of the process is printed at the end (kronfluence's part included). Needs the
seed trained (step 1).

usage: python bench/bench_ekfac.py --task mnist3 --num_per_class 50 [--model cnn] [--seed_id 0]
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
from scipy.stats import spearmanr
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.core.allocator import retain_freed_memory
from bayestda.data.subsets import Subset
from bayestda.methods.ekfac import if_ekfac
from bayestda.methods.influence import if_ggn
from bayestda.models import families
from bayestda.models.func import FunctionalModel
from bench import seed_bench


def as_dtype(subset: Subset, dtype) -> Subset:
    return Subset(subset.x.to(dtype), subset.y, subset.idx)


def kronfluence_scores(model, train, test, damping: float, out_dir: str) -> torch.Tensor:
    """[n_train, n_test] −(kronfluence's pairwise EK-FAC scores of the empirical Fisher): IF's sign."""
    import kronfluence
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

    task = Classification()
    model = kronfluence.prepare_model(model, task)
    analyzer = kronfluence.Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=out_dir)
    as_dataset = lambda d: list(zip(d.x, d.y, strict=True))  # noqa: E731
    analyzer.fit_all_factors("f", as_dataset(train), per_device_batch_size=128, overwrite_output_dir=True,
                             factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True))  # fmt: skip
    analyzer.compute_pairwise_scores("s", "f", as_dataset(test), as_dataset(train), per_device_query_batch_size=128,
                                     per_device_train_batch_size=128, overwrite_output_dir=True,
                                     score_args=ScoreArguments(damping_factor=damping))  # fmt: skip
    return -analyzer.load_pairwise_scores("s")["all_modules"].T


def main() -> None:
    p = seed_bench.parser(__doc__, task="mnist3", threads="torch threads")
    p.add_argument("--damping", type=float, help="λ (default: the model family's, as step 2)")
    p.add_argument("--skip_ggn", action="store_true", help="skip the exact GGN (3.; minutes at CIFAR10-50pc)")
    args = p.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    samples = seed_bench.seed_samples(args)
    samples.checkpoints = samples.checkpoints[-1:]  # the last one
    damping = args.damping or families.of_model(args.model).if_damping["ekfac"]
    print(f"{args.model} {args.task} {args.num_per_class}pc seed_id {args.seed_id}, epoch {samples.epochs[-1]}: "
          f"{len(samples.train)} train × {len(samples.test)} test, λ = {damping:g}, {torch.get_num_threads()} threads")  # fmt: skip

    def timed(label, fn):
        start = time.perf_counter()
        out = fn()
        print(f"{label:44s} {time.perf_counter() - start:8.2f} s")
        return out, time.perf_counter() - start

    def scored(dtype, rows: int | None = None, **kwargs):
        model = next(iter(samples.models("cpu", dtype)))
        train, test = as_dtype(samples.train, dtype), as_dtype(samples.test, dtype)
        if rows:
            train, test = (Subset(d.x[:rows], d.y[:rows], d.idx[:rows]) for d in (train, test))
        return if_ekfac(FunctionalModel(model), train, test, damping, **kwargs)[0]

    scored(torch.float32, rows=8)  # a warm-up on 8 images: the first vmap and vjp calls set up more than they compute
    ggn_fisher, _ = timed("if-ekfac (GGN, float32): step 2's default", lambda: scored(torch.float32))
    ggn64, _ = timed("if-ekfac (GGN) in float64", lambda: scored(torch.float64))
    print(
        f"float32 against float64: max |difference| / max |score| "
        f"{((ggn_fisher.double() - ggn64).abs().max() / ggn64.abs().max()).item():.1e}"
    )
    empirical, t_ours = timed(
        "if-ekfac --fisher empirical (float32)", lambda: scored(torch.float32, fisher="empirical")
    )
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        print("kronfluence is not installed (pip install -r req-test.txt): no reference timing")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = next(iter(samples.models("cpu", torch.float32)))
            theirs, t_theirs = timed("kronfluence 1.0.1 ekfac, empirical Fisher",
                                     lambda: kronfluence_scores(model, samples.train, samples.test, damping, tmp))  # fmt: skip
        diff = ((empirical - theirs).abs().max() / theirs.abs().max()).item()
        print(f"ratio kronfluence / bayestda: ×{t_theirs / t_ours:.1f};  max |difference| / max |score|: {diff:.1e}")
    if not args.skip_ggn:
        model = next(iter(samples.models("cpu", torch.float64)))
        train, test = as_dtype(samples.train, torch.float64), as_dtype(samples.test, torch.float64)
        exact, _ = timed("if-ggn (exact damped GGN)", lambda: if_ggn(FunctionalModel(model), train, test, damping))
        rel = ((ggn64 - exact).norm() / exact.norm()).item()
        rho = spearmanr(ggn64.flatten().numpy(), exact.flatten().numpy())[0]
        print(f"if-ekfac against if-ggn: Spearman {rho:.3f}, relative error ‖ekfac − ggn‖/‖ggn‖ {rel:.3f}")
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
