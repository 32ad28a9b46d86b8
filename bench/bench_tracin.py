#!/usr/bin/env python
"""TracIn over one seed's run: `tracin-cp` and `tracin-ideal` against Grad-Dot on one checkpoint (the issue's
target: TracInCP ≤ 15 × GD, for 15 epochs) and against dattri 0.3.0's `TracInAttributor` given the run's
end-of-epoch checkpoints and learning rates (a test-only dependency, `pip install -r req-test.txt`).

Times, on the same seed and data: (1) GD on the last checkpoint; (2) tracin-cp, replay and scoring of every epoch
included; (3) tracin-ideal; (4) dattri's TracInCP (no projection) on the checkpoints our replay produced, which
it needs stored (the replay's time is not counted for it). Each of (1)-(3) is called once untimed, then timed
`--repeats` times: a process's first calls pay one-time costs (torch.func's lazy imports, oneDNN building its
kernels for each new shape, fresh pages), and a single sub-second call swings widely on a shared VM.
Prints the median and range of each, the ratios of medians, and how far dattri's scores are from ours. Needs
the seed trained (step 1).

usage: python bench/bench_tracin.py --task mnist3 --num_per_class 50 [--model cnn] [--seed_id 0] [--repeats 5]
       [--skip_dattri]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bayestda.core.allocator import retain_freed_memory
from bayestda.methods import tracin
from bayestda.methods.grad_similarity import grad_dot_and_cos
from bayestda.models import families
from bayestda.models.func import FunctionalModel
from bayestda.runs.replay import replay
from bench import seed_bench


def dattri_tracin(samples, states: list[dict], lrs: list[float]) -> torch.Tensor:
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask
    from torch.func import functional_call

    model = families.init(samples.configs[-1]).eval()

    def loss(params, data):
        x, y = data
        return F.cross_entropy(functional_call(model, params, (x[None],)), y[None])

    task = AttributionTask(loss_func=loss, model=model, checkpoints=states)
    attributor = TracInAttributor(task, weight_list=torch.tensor(lrs), normalized_grad=False)
    attributor.projector_kwargs = None  # dattri projects unless this is None
    loader = lambda s: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(s.x, s.y), batch_size=64)  # noqa: E731
    return attributor.attribute(loader(samples.train), loader(samples.test))


def main() -> None:
    p = seed_bench.parser(__doc__, task="mnist3", threads="torch threads")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each job, after an untimed one")
    p.add_argument("--skip_dattri", action="store_true", help="time this package only")
    args = p.parse_args()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    samples = seed_bench.seed_samples(args)
    cpu = torch.device("cpu")
    epochs = samples.configs[-1]["epochs"]
    print(f"{args.model} {args.task} {args.num_per_class}pc seed_id {args.seed_id}: {len(samples.train)} train × "
          f"{len(samples.test)} test, {epochs} epochs, {torch.get_num_threads()} threads")  # fmt: skip

    model = list(samples.models(cpu, torch.float32))[-1]

    def timed(label: str, job, note=lambda t: ""):
        """job()'s median wall time over `--repeats` calls after an untimed one, printed with its range; and its
        last result."""
        out, times = job(), []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = job()
            times.append(time.perf_counter() - start)
        t = statistics.median(times)
        print(f"{label:28s} {t:8.2f} s  ({min(times):.2f}–{max(times):.2f}){note(t)}", flush=True)
        return t, out

    t_gd, _ = timed("gd, one checkpoint", lambda: grad_dot_and_cos(FunctionalModel(model), samples.train, samples.test))
    times, scores = {}, {}
    for kind in tracin.KINDS:
        target = f" (the issue's target: ≤ ×{epochs})" if kind == "cp" else ""
        times[kind], out = timed(
            f"tracin-{kind}",
            lambda kind=kind: tracin.score(samples, tracin.TracInOptions(kind=kind, chunk=128), cpu),
            lambda t, target=target: f"   ×{t / t_gd:.1f} GD{target}",
        )
        scores[kind] = out[0][0]
    if args.skip_dattri:
        return
    try:
        import dattri  # noqa: F401
    except ImportError:
        print("dattri is not installed (pip install -r req-test.txt): no reference timing")
        return
    states, lrs = [], []

    def keep(epoch, model, optimizer, train_loss):
        states.append({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()})
        lrs.append(optimizer.param_groups[0]["lr"])

    replay(samples, cpu, on_epoch_end=keep)
    start = time.perf_counter()
    theirs = dattri_tracin(samples, states, lrs).double()
    t_dattri = time.perf_counter() - start
    ours = scores["cp"].double()
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    print(f"{'dattri 0.3.0 TracInCP':28s} {t_dattri:8.2f} s   ×{t_dattri / times['cp']:.1f} tracin-cp; "
          f"relative difference of the scores {rel:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
