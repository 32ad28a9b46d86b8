"""Leave-one-out: τ = L(z; θ without z_j) − L(z; θ), by retraining with the one training loop.

Three protocols, each a different ground truth:
- `paper` (the original code): from each checkpoint, continue training with a fresh Adam and the seed's
  batch order for the full epoch budget, with z_j's loss zeroed (it still counts in the batch-mean
  denominator). Compare with the checkpoint itself. This conflates removing z_j with E extra epochs.
- `paired`: the same continuation, compared with the same continuation on the full data, so that z_j
  is the only difference.
- `scratch`: retrain from the seed's initialisation and batch order with z_j removed from its batches,
  read off the last 5 epochs, and compare with the same retrain on the full data. This is the
  textbook LOO for a seed, and it needs one set of retrains per seed, not one per checkpoint.

On a CPU every retrain runs single-threaded, in this process or in `workers` processes. Results
therefore do not depend on `workers`: CPU kernels give slightly different bits for different thread
counts. On a GPU, `stack` retrains train together as one `ModelStack` (one vmapped model per step),
which equals separate retrains up to float rounding.

The retrain machinery here (`Retrain`, `run_retrains`) also serves the LDS ground truth (`subset_retrains.py`):
a retrain from the initialisation on a subset of the training data (`Retrain.members`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import torch
from tqdm.auto import tqdm

from .. import families
from ..allocator import retain_freed_memory
from ..cli import available_cores
from ..data import Subset
from ..lifeline import die_with_parent
from ..options import option
from ..stacking import ModelStack
from ..training import TrainConfig, batch_orders, evaluate, make_optimizer, train
from .registry import Method, loss_dtype_option, register
from .samples import SeedSamples

PROTOCOLS = ("paper", "paired", "scratch")


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
    loss_dtype: torch.dtype = torch.float32  # dtype of the test cross-entropy (`training.per_sample_losses`)


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
    return retrain_from(ctx, job, model, make_optimizer(model, ctx.cfg))  # fresh Adam, as the original's LOO


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
    losses = {}

    def record(epoch, model, optimizer, train_loss):
        if epoch in ctx.eval_epochs:
            losses[epoch] = evaluate(model, ctx.test_data, ctx.loss_dtype)[0]

    train(model, optimizer, ctx.train_data, orders, ctx.cfg, sample_weight=weight, exclude=exclude,
          extras=families.train_extras(ctx.config), on_epoch_end=record)  # fmt: skip
    return torch.stack([losses[e] for e in ctx.eval_epochs])


def stackable(config: dict) -> bool:
    """Whether a run's retrains can share a `ModelStack`: not if it draws random numbers in training
    (dropout would draw one mask for the whole stack)."""
    return families.train_extras(config).rng_seed is None


def _removes_a_whole_batch(ctx: RetrainContext, job: Retrain) -> bool:
    """Whether removing the job's sample empties one of its batches (a step the sequential loop skips)."""
    if job.leave_out is None or job.zero_weight:
        return False
    batches = ctx.orders.split(ctx.cfg.batch_size, dim=1)
    return len(batches[-1][0]) == 1 and bool((batches[-1][:, 0] == job.leave_out).any())


def run_stacked_retrains(ctx: RetrainContext, jobs: list[Retrain]) -> list[torch.Tensor]:
    """The jobs' test losses ([len(eval_epochs), n_test] each), all trained at once as one `ModelStack`.

    Equal to `run_retrain` per job up to float rounding: the same starts, batches and fresh Adam. A job
    either zeroes its sample's loss or removes it from its batch, or trains on its members, as in `run_retrain`.
    """
    weight, exclude = _weights_and_exclusions(jobs, len(ctx.train_data))
    if not stackable(ctx.config):
        raise ValueError("this model draws random numbers in training (dropout); its retrains cannot be stacked")
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


def run_retrains(
    ctx: RetrainContext, jobs: list[Retrain], workers: int, desc: str, stack: int = 1
) -> list[torch.Tensor]:
    """All jobs: `stack` at a time as one `ModelStack` when stack > 1; else each single-threaded on CPU,
    in `workers` processes when workers > 1."""
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
        threads = torch.get_num_threads()
        torch.set_num_threads(retrain_threads(ctx.device, stack))
        try:
            out = []
            for job in jobs:
                out.append(run_retrain(ctx, job))
                bar.update()
        finally:
            torch.set_num_threads(threads)
            bar.close()
        return out
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(ctx, os.getpid()))  # fmt: skip
    try:
        out = []
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


def loo_scores(protocol: str, ctx: RetrainContext, base_losses: torch.Tensor, workers: int, stack: int = 1):
    """[n_ckpts, n_train, n_test] LOO scores of one seed, and protocol diagnostics.

    `base_losses` [n_ckpts, n_test] are the checkpoints' own test losses (the `paper` baseline).
    """
    n = len(ctx.train_data)
    if protocol == "scratch":
        jobs = [Retrain(None, zero_weight=False)] + [Retrain(j, zero_weight=False) for j in range(n)]
        results = run_retrains(ctx, jobs, workers, "LOO scratch", stack)
        full, loo = results[0], torch.stack(results[1:], 1)  # [ckpts, m], [ckpts, n, m]
        diag = {"max_abs_full_retrain_minus_checkpoint_test_loss": (full - base_losses).abs().max().item()}
        return loo - full[:, None, :], diag
    if protocol not in ("paper", "paired"):
        raise ValueError(f"unknown LOO protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    n_ckpts = len(ctx.start_states)
    jobs = [Retrain(j, start=c) for c in range(n_ckpts) for j in range(n)]
    if protocol == "paired":
        jobs += [Retrain(None, start=c) for c in range(n_ckpts)]
    results = run_retrains(ctx, jobs, workers, f"LOO {protocol}", stack)
    loo = torch.stack([r[-1] for r in results[: n_ckpts * n]]).view(n_ckpts, n, -1)
    if protocol == "paper":
        return loo - base_losses[:, None, :], {}
    full = torch.stack([r[-1] for r in results[n_ckpts * n :]])
    diag = {"mean_abs_continuation_shift_of_test_loss": (full - base_losses).abs().mean().item()}
    return loo - full[:, None, :], diag


# ----------------------------------------------------------------------------- the method


def resolve_stack(stack: int | str, config: dict, device) -> int:
    """`--stack auto`: the model family's for the device; 1 for models with training-time randomness, whose
    retrains cannot be stacked."""
    if not stackable(config):
        return 1
    auto = families.of_config(config).auto_stack.get(torch.device(device).type, 1)
    return auto if stack == "auto" else int(stack)


def retrain_context(protocol: str, samples: SeedSamples, device, loss_dtype: torch.dtype = torch.float32):
    """What every LOO retrain of a seed shares: `scratch` retrains from the initialisation and is read at the
    checkpoints' epochs; `paper`/`paired` continue from each checkpoint and are read at the last epoch."""
    cfg = samples.configs[0]
    scratch = protocol == "scratch"
    return RetrainContext(
        config=cfg, train_data=samples.train, test_data=samples.test.to(device),
        cfg=TrainConfig.from_config(cfg), orders=batch_orders(len(samples.train), cfg["epochs"], cfg["batch_seed"]),
        start_states=[] if scratch else [c["state_dict"] for c in samples.checkpoints],
        eval_epochs=tuple(samples.epochs) if scratch else (cfg["epochs"],), device=str(device), loss_dtype=loss_dtype,
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
                              + ". Models that use dropout in training (the ViT) always retrain one at a time",
                              auto=True, minimum=1)  # fmt: skip

    def resolve(self, family, on_gpu: bool):
        return dataclasses.replace(self, workers=self.workers or available_cores())


@dataclass(frozen=True)
class LOOOptions(RetrainOptions):
    protocol: str = option("paper", "which retraining defines the ground truth: paper (continue from each "
                           "checkpoint without z_j; compare with the checkpoint, as the original), paired (compare "
                           "with the same continuation on the full data), scratch (retrain from the seed's "
                           "initialisation and batch order)", choices=PROTOCOLS)  # fmt: skip


def score(samples: SeedSamples, opts: LOOOptions, device) -> tuple[torch.Tensor, list[dict]]:
    """LOO retrains one seed as a whole (`scratch`), or continues from each of its checkpoints."""
    loss_dtype = getattr(torch, opts.loss_dtype)
    ctx = retrain_context(opts.protocol, samples, device, loss_dtype)
    base = torch.stack([evaluate(m, samples.test, loss_dtype)[0] for m in samples.models(device)])
    stack = resolve_stack(opts.stack, samples.configs[0], device)
    scores, diag = loo_scores(opts.protocol, ctx, base, opts.workers, stack)
    return scores, [{**diag, "stack": stack, "retrain_threads": retrain_threads(device, stack)}]


METHOD = register(
    Method(
        name="loo", label="LOO", helps_sign=+1, options=LOOOptions, score=score, per_seed=True, variant="protocol",
        loss_difference=True, ground_truth=True, removal=lambda n: 1.0,
    )
)  # fmt: skip
