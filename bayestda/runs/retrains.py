"""Retraining a seed with one change: the engine of every ground truth that retrains (LOO, the LDS subsets).

A `Retrain` is the seed's training run replayed through the one training loop (`training.loop.train`) with its
initialisation or one of its checkpoints as the start, its batch order, its recipe (a fresh optimizer of the
recipe, as the original's LOO), its family's loss and training extras, and one change: a training point's loss
zeroed (kept in the batch-mean denominator, the paper's LOO), or the point removed from its batches, or training
on a subset of the points only (visited in the seed's order restricted to them, `restrict_orders`). It returns
the test losses at chosen epochs.

On a CPU every retrain runs single-threaded, in this process or in `workers` processes, so results do not depend
on `workers` (CPU kernels give other last bits with other thread counts). `stack` retrains can instead train
together as one `training.stacking.ModelStack` (one vmapped model per step; the GPU default), which equals
separate retrains up to float rounding; a model with training-time randomness (dropout, augmentation) or
running statistics (BatchNorm) retrains one at a time, and `--stack` above 1 is refused for it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import torch
from tqdm.auto import tqdm

from ..core.allocator import retain_freed_memory
from ..core.cli import available_cores
from ..core.errors import UserError
from ..core.lifeline import die_with_parent
from ..core.options import option
from ..data.subsets import Subset
from ..models import families
from ..training.loop import batch_orders, evaluate, train
from ..training.recipe import TrainConfig, make_optimizer
from ..training.stacking import ModelStack
from .samples import SeedSamples


def loss_dtype_option():
    """The option of every step whose numbers are differences of test losses (LOO, ATS, the LDS retrains)."""
    return option("float32", "dtype of the test losses whose change is tau. float32 (as the paper) rounds a loss "
                  "below ~1e-7 (a confident, correct prediction) to steps of 1.2e-7; float64 resolves it, from "
                  "the same logits", choices=("float32", "float64"))  # fmt: skip


@dataclass(frozen=True)
class RetrainContext:
    """What every retrain of one seed shares; sent once to each worker."""

    config: dict  # the seed's run config: the model family, its init seed and training extras
    train_data: Subset
    test_data: Subset
    cfg: TrainConfig
    orders: torch.Tensor  # [epochs, n] the seed's batch order
    start_states: list[dict]  # continuation protocols: one state_dict per checkpoint
    eval_epochs: tuple[int, ...]  # epochs whose test losses a retrain returns
    device: str = "cpu"
    loss_dtype: torch.dtype = torch.float32  # dtype of the test cross-entropy (`training.loop.per_sample_losses`)


@dataclass(frozen=True)
class Retrain:
    """One retrain: drop `leave_out` (a position in the train subset, or None for the full data), or train on
    `members` only (positions in the train subset)."""

    leave_out: int | None
    start: int | None = None  # index into start_states; None = from the seed's initialisation
    zero_weight: bool = True  # paper semantics (zeroed loss, kept in the denominator) vs removed
    members: tuple[int, ...] | None = None  # visited in the seed's order restricted to them (`restrict_orders`)


def restrict_orders(orders: torch.Tensor, members) -> torch.Tensor:
    """[epochs, k]: each epoch's order [epochs, n] with every position outside `members` (k positions) left out, the
    rest in the order the full run visits them; batches are then consecutive slices of the k, so a retrain on a
    subset takes fewer, full-size steps."""
    keep = torch.zeros(orders.shape[-1], dtype=torch.bool)
    keep[torch.as_tensor(members)] = True
    return orders[keep[orders]].view(orders.shape[0], -1)


def _orders(ctx: RetrainContext, jobs: list[Retrain]) -> torch.Tensor:
    """The batch order the jobs train in: the seed's [epochs, n], or for subset jobs one restricted order per job
    ([epochs, k] for one job, [M, epochs, k] for a stack)."""
    with_members = [j.members is not None for j in jobs]
    if not any(with_members):
        return ctx.orders
    if not all(with_members) or any(j.leave_out is not None or j.start is not None for j in jobs):
        raise ValueError("subset retrains start from the initialisation and leave nothing else out")
    if len({len(j.members) for j in jobs}) > 1:
        raise ValueError("one stack trains subsets of one size")
    orders = [restrict_orders(ctx.orders, j.members) for j in jobs]
    return orders[0] if len(jobs) == 1 else torch.stack(orders)


def run_retrain(ctx: RetrainContext, job: Retrain) -> torch.Tensor:
    """[len(eval_epochs), n_test] test losses of one retrain."""
    model = start_model(ctx, job)
    return retrain_from(ctx, job, model, make_optimizer(model, ctx.cfg))  # a fresh optimizer, as the original LOO


def start_model(ctx: RetrainContext, job: Retrain) -> torch.nn.Module:
    """The model a retrain starts from: the seed's initialisation or one of its checkpoints, on ctx.device."""
    if job.start is None:
        return families.init(ctx.config).to(ctx.device)
    return families.from_state(ctx.config, ctx.start_states[job.start]).to(ctx.device)


def retrain_from(ctx: RetrainContext, job: Retrain, model, optimizer) -> torch.Tensor:
    """The job's retrain of `model` (at its start) with `optimizer`; benchmarks pass other models or optimizers."""
    weight, exclude = _weights_and_exclusions([job], len(ctx.train_data))
    weight = None if weight is None else weight[0]
    exclude = None if exclude is None else int(exclude[0])  # one model: its sample leaves its batch
    return _train_and_record(ctx, model, optimizer, weight, exclude, _orders(ctx, [job]))


def _weights_and_exclusions(jobs: list[Retrain], n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`train`'s sample weights [len(jobs), n] (zeroed jobs: 0 at their sample) or exclusions [len(jobs)] (removed
    jobs: their position, -1 for none) of one model per job; None where no job needs them."""
    zeroed = [j.leave_out is not None and j.zero_weight for j in jobs]
    removed = [j.leave_out is not None and not j.zero_weight for j in jobs]
    if any(removed) and any(zeroed):
        raise ValueError("one stack cannot mix zeroed and removed samples")
    weight, exclude = None, None
    if any(zeroed):
        weight = torch.ones(len(jobs), n)
        for m, job in enumerate(jobs):
            if job.leave_out is not None:
                weight[m, job.leave_out] = 0.0
    elif any(removed):
        exclude = torch.tensor([-1 if j.leave_out is None else j.leave_out for j in jobs])
    return weight, exclude


def _train_and_record(ctx: RetrainContext, model, optimizer, weight, exclude, orders) -> torch.Tensor:
    """Train `model` (one model or a stack) on the seed's batches; its test losses at ctx.eval_epochs, stacked on
    dim 0: [len(eval_epochs), n_test], or [len(eval_epochs), M, n_test] for a stack of M."""
    losses, extras = {}, families.train_extras(ctx.config)

    def record(epoch, model, optimizer, train_loss):
        if epoch in ctx.eval_epochs:
            losses[epoch] = evaluate(model, ctx.test_data, extras.loss, ctx.loss_dtype)[0]

    train(model, optimizer, ctx.train_data, orders, ctx.cfg, sample_weight=weight, exclude=exclude, extras=extras,
          on_epoch_end=record)  # fmt: skip
    return torch.stack([losses[e] for e in ctx.eval_epochs])


def unstackable(config: dict) -> str | None:
    """Why a run's retrains cannot share a `ModelStack`, or None: random numbers drawn in training (one dropout mask
    or crop for the whole stack), or running statistics (one BatchNorm buffer for the whole stack)."""
    if families.train_extras(config).random:
        return "it draws random numbers in training (dropout or augmentation), which a stack would share"
    if stats := families.running_statistics(config):
        return f"its {stats} keep running statistics in training, which a stack's models would share"
    return None


def stackable(config: dict) -> bool:
    return unstackable(config) is None


def _removes_a_whole_batch(ctx: RetrainContext, job: Retrain) -> bool:
    """Whether removing the job's sample empties one of its batches (a step the sequential loop skips)."""
    if job.leave_out is None or job.zero_weight:
        return False
    batches = ctx.orders.split(ctx.cfg.batch_size, dim=1)
    return len(batches[-1][0]) == 1 and bool((batches[-1][:, 0] == job.leave_out).any())


def run_stacked_retrains(ctx: RetrainContext, jobs: list[Retrain]) -> list[torch.Tensor]:
    """The jobs' test losses ([len(eval_epochs), n_test] each), all trained at once as one `ModelStack`.

    Equal to `run_retrain` per job up to float rounding: the same starts, batches and fresh optimizer. A job
    either zeroes its sample's loss or removes it from its batch, or trains on its members, as in `run_retrain`.
    """
    weight, exclude = _weights_and_exclusions(jobs, len(ctx.train_data))
    if why := unstackable(ctx.config):
        raise ValueError(f"this model's retrains cannot be stacked: {why}")
    template = families.init(ctx.config)
    states = [template.state_dict() if j.start is None else ctx.start_states[j.start] for j in jobs]
    stack = ModelStack(template, states).to(ctx.device)
    per_epoch = _train_and_record(ctx, stack, make_optimizer(stack, ctx.cfg), weight, exclude, _orders(ctx, jobs))
    return list(per_epoch.unbind(1))  # [len(eval_epochs), n_test] per model


_WORKER_CTX: RetrainContext | None = None


def _init_worker(ctx: RetrainContext, parent_pid: int) -> None:
    global _WORKER_CTX
    die_with_parent(parent_pid)  # no orphan keeps retraining if the step is killed
    torch.set_num_threads(1)
    retain_freed_memory()  # a worker is a fresh process: without it every step faults in new pages
    _WORKER_CTX = ctx


def _worker_retrain(job: Retrain) -> torch.Tensor:
    return run_retrain(_WORKER_CTX, job)


def retrain_threads(device, stack: int) -> int:
    """CPU threads each retrain sums with (the bits depend on it): one on a CPU unless stacked (`run_retrains`)."""
    return 1 if torch.device(device).type == "cpu" and stack <= 1 else torch.get_num_threads()


# Seconds to start a pool of spawned workers, each importing torch and the package (1.6 s for two on this project's
# 2-core machine, `bench/bench_retrain_variants.py`): below it, a seed's retrains run faster in this process.
POOL_START_S = 2.0


def _one_by_one(ctx: RetrainContext, jobs: list[Retrain], stack: int, bar, close: bool = False) -> list[torch.Tensor]:
    """The jobs in this process, one after another, each with the threads `retrain_threads` gives it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(retrain_threads(ctx.device, stack))
    try:
        out = []
        for job in jobs:
            out.append(run_retrain(ctx, job))
            bar.update()
        return out
    finally:
        torch.set_num_threads(threads)
        if close:
            bar.close()


def run_retrains(
    ctx: RetrainContext, jobs: list[Retrain], workers: int, desc: str, stack: int = 1
) -> list[torch.Tensor]:
    """All jobs: `stack` at a time as one `ModelStack` when stack > 1; else each single-threaded on CPU, in
    `workers` processes when workers > 1 and the retrains are long enough to repay starting them."""
    bar = tqdm(total=len(jobs), desc=desc, unit="retrain", leave=False)
    if stack > 1:
        alone = {k for k, job in enumerate(jobs) if _removes_a_whole_batch(ctx, job)}
        together = [k for k in range(len(jobs)) if k not in alone]
        groups = [together[i : i + stack] for i in range(0, len(together), stack)] + [[k] for k in sorted(alone)]
        out = {}
        for group in groups:
            if len(group) > 1:
                out.update(zip(group, run_stacked_retrains(ctx, [jobs[k] for k in group]), strict=True))
            else:
                out[group[0]] = run_retrain(ctx, jobs[group[0]])
            bar.update(len(group))
        bar.close()
        return [out[k] for k in range(len(jobs))]
    if workers <= 1 or ctx.device != "cpu":
        return _one_by_one(ctx, jobs, stack, bar, close=True)
    # The first retrain here, timed: when the rest would take less time in this process than starting the pool
    # (spawned interpreters that import torch), they stay here. Each retrain is single-threaded either way, so
    # the results are the same bits.
    start = time.perf_counter()
    out = _one_by_one(ctx, jobs[:1], stack, bar)
    rest = jobs[1:]
    if (time.perf_counter() - start) * len(rest) * (1 - 1 / workers) < POOL_START_S:
        return out + _one_by_one(ctx, rest, stack, bar, close=True)
    jobs = rest
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(ctx, os.getpid()))  # fmt: skip
    try:
        # One job at a time: chunks of several retrains left one worker idle at the end.
        for result in pool.map(_worker_retrain, jobs, chunksize=1):
            out.append(result)
            bar.update()
    except BaseException:  # Ctrl-C, SIGTERM: stop the workers now, not after the retrains already queued
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return out


def resolve_stack(stack: int | str, config: dict, device) -> int:
    """`--stack auto`: the model family's for the device, or 1 for a model whose retrains cannot be stacked
    (`unstackable`); a number above 1 for such a model is refused in one line."""
    why = unstackable(config)
    if stack == "auto":
        return 1 if why else families.of_config(config).auto_stack.get(torch.device(device).type, 1)
    if int(stack) > 1 and why:
        raise UserError(f"--stack {stack}: the {families.of_config(config).name} family's retrains cannot be stacked: {why}; use "
                        "--stack 1 (or auto)")  # fmt: skip
    return int(stack)


def retrain_context(samples: SeedSamples, device, loss_dtype: torch.dtype = torch.float32,
                    from_checkpoints: bool = False) -> RetrainContext:  # fmt: skip
    """What every retrain of a seed shares: retrains from the initialisation are read at the checkpoints' epochs;
    with `from_checkpoints`, retrains continue from each checkpoint and are read at the run's last epoch."""
    cfg = samples.configs[0]
    return RetrainContext(
        config=cfg, train_data=samples.train, test_data=samples.test.to(device),
        cfg=TrainConfig.from_config(cfg), orders=batch_orders(len(samples.train), cfg["epochs"], cfg["batch_seed"]),
        start_states=[c["state_dict"] for c in samples.checkpoints] if from_checkpoints else [],
        eval_epochs=(cfg["epochs"],) if from_checkpoints else tuple(samples.epochs), device=str(device),
        loss_dtype=loss_dtype,
    )  # fmt: skip


@dataclass(frozen=True)
class RetrainOptions:
    """The options of every step that retrains a seed: LOO, and the LDS ground truth (`subset_retrains`)."""

    loss_dtype: str = loss_dtype_option()
    workers: int | None = option(None, "CPU: processes, one thread each (results do not depend on it); default: "
                                 "the cores this process may use", minimum=1)  # fmt: skip
    stack: int | str = option("auto", lambda: "retrains trained together as one vmapped model (equal to separate "
                              "retrains up to float rounding). auto: the model family's, on a CPU/GPU: "
                              + families.defaults(lambda f: f"{f.auto_stack['cpu']}/{f.auto_stack['cuda']}")
                              + ". Models with dropout, augmentation or BatchNorm (the ViT) always retrain one at a time",
                              auto=True, minimum=1)  # fmt: skip

    def resolve(self, family, on_gpu: bool):
        return dataclasses.replace(self, workers=self.workers or available_cores())
