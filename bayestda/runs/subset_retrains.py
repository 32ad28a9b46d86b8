"""The LDS ground truth: each seed retrained on M random training subsets, its test losses at the checkpoint epochs.

**Subsets.** M subsets of exactly k = round(α·n) training points each (`--lds_subsets`, `--lds_alpha`), drawn
without replacement from `--lds_subset_seed` alone, so every seed of an experiment retrains on the same subsets
(which the noise ceiling of `lds.py` needs: another seed's retrains on the same subsets).

**A retrain.** It starts from the seed's initialisation and follows the seed's batch order restricted to the
subset: each epoch visits the subset's members in the order the full run visits them, in consecutive batches of
the recipe's size B (`retrains.restrict_orders`). A retrain therefore takes ⌈k/B⌉ full-size steps per epoch where
the full run takes ⌈n/B⌉, with a fresh optimizer and the run's epoch budget: it is the seed's training recipe
(`training.recipe`) applied to the subset (`runs.retrains`). Its test losses are read at the checkpoint epochs of the seed (the last 5).

One full-data retrain per seed is run as well, as a check of the replay: it must reproduce the checkpoints' test
losses (`max_abs_full_retrain_minus_checkpoint_test_loss`, up to float rounding with another thread count).

**The artifact** (one per seed, `core.paths.subset_retrain_file`): `losses` [M, n_ckpts, n_test] in the loss dtype,
`members` bool [M, n_train], `train_idx`, `test_idx`, `ckpt_epochs`, `seed` and `config` (the options, the
checkpoints' run config, device, threads, time and the check above). `load_subset_retrains` checks each file
against the experiment it is used for.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifacts.checkpoints import retrained_since
from ..core import __version__, hints
from ..core.errors import UserError
from ..core.io import atomic_torch_save, remove_stale_temp_files
from ..core.options import option
from ..core.paths import read_seeds, seed_model_dir, subset_retrain_file
from ..core.seeds import stream_seed
from ..core.usage import peak_memory_gib
from ..data.tasks import task_argv
from ..models import families
from ..training.loop import evaluate
from . import retrains
from .samples import SeedSamples, load_seed_samples

SCRIPT = "retrain_subsets.py"


@dataclass(frozen=True)
class SubsetRetrainOptions(retrains.RetrainOptions):
    lds_subsets: int = option(50, "M: random training subsets, each retrained on every seed", minimum=2)
    lds_alpha: float = option(0.5, "each subset holds round(alpha·n) of the n training points", positive=True)
    lds_subset_seed: int = option(0, "seed of the subsets; every seed of an experiment retrains on the same ones",
                                  minimum=0)  # fmt: skip

    def subset_config(self) -> dict:
        """What fixes the subsets and the losses: two artifacts that differ here are of different ground truths."""
        return {"lds_subsets": self.lds_subsets, "lds_alpha": self.lds_alpha,
                "lds_subset_seed": self.lds_subset_seed, "loss_dtype": self.loss_dtype}  # fmt: skip


def subset_size(n: int, alpha: float) -> int:
    k = round(alpha * n)
    if not 1 <= k < n:
        raise UserError(f"--lds_alpha {alpha} gives subsets of {k} of the {n} training points; choose alpha so that "
                        f"1 <= round(alpha·{n}) < {n}, e.g. --lds_alpha 0.5")  # fmt: skip
    return k


def draw_subsets(n: int, n_subsets: int, alpha: float, subset_seed: int) -> torch.Tensor:
    """[M, n] bool membership of M subsets of exactly round(α·n) points, a function of `subset_seed` only."""
    k = subset_size(n, alpha)
    gen = torch.Generator().manual_seed(stream_seed(subset_seed, "lds-subsets"))
    members = torch.zeros(n_subsets, n, dtype=torch.bool)
    for m in range(n_subsets):
        members[m, torch.randperm(n, generator=gen)[:k]] = True
    return members


def retrain_seed(samples: SeedSamples, opts: SubsetRetrainOptions, device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(losses [M, n_ckpts, n_test], members [M, n], diagnostics) of one seed."""
    loss_dtype = getattr(torch, opts.loss_dtype)
    members = draw_subsets(len(samples.train), opts.lds_subsets, opts.lds_alpha, opts.lds_subset_seed)
    stack = retrains.resolve_stack(opts.stack, samples.configs[0], device)
    ctx = retrains.retrain_context(samples, device, loss_dtype)
    jobs = [retrains.Retrain(None, members=tuple(row.nonzero().view(-1).tolist())) for row in members]
    losses = torch.stack(retrains.run_retrains(ctx, jobs, opts.workers, "LDS retrains", stack), 0)  # [M, ckpts, m]
    full = retrains.run_retrains(ctx, [retrains.Retrain(None, zero_weight=False)], 1, "full-data retrain")[0]
    loss = families.loss(samples.configs[0])
    base = torch.stack([evaluate(m, samples.test, loss, loss_dtype)[0] for m in samples.models(device)])
    diag = {
        "max_abs_full_retrain_minus_checkpoint_test_loss": (full - base).abs().max().item(),
        "stack": stack,
        "retrain_threads": retrains.retrain_threads(device, stack),
    }
    return losses, members, diag


def retrain_command(model: str, task: str, num_per_class: int, *extra: str) -> str:
    argv = [SCRIPT, "--model", model, *task_argv(task), "--num_per_class", str(num_per_class)]
    return hints.command(argv, *extra)


def _seed_command(model: str, task: str, n: int, seed: int, *extra: str) -> str:
    return retrain_command(model, task, n, "--seed_id", str(read_seeds().index(seed)), *extra)


def run_subset_retrains(model: str, task: str, num_per_class: int, seeds: list[int], out_root: Path, data_root: Path,
                        device, opts: SubsetRetrainOptions, overwrite: bool = False) -> dict[int, Path | None]:  # fmt: skip
    """Write every seed's artifact not already there; {seed: path, or None if skipped}. A file made with other
    subsets or loss dtype is refused without `overwrite`."""
    done = {}
    for seed in tqdm(seeds, desc=f"LDS retrains {model} {task} {num_per_class}pc", unit="seed", disable=len(seeds) < 2):
        path = subset_retrain_file(out_root, model, task, num_per_class, seed)
        remove_stale_temp_files(path.parent)
        if path.exists() and not overwrite:
            old = _read(path, _seed_command(model, task, num_per_class, seed, "--overwrite"))
            if (got := old["config"]["subsets"]) != opts.subset_config():
                raise UserError(f"{path} holds retrains with {_describe(got)}, not {_describe(opts.subset_config())}; "
                                f"pass --overwrite to replace it, or ask for the same subsets")  # fmt: skip
            done[seed] = None
            continue
        samples = load_seed_samples(model, task, num_per_class, seed, out_root, data_root)
        start = time.perf_counter()
        losses, members, diag = retrain_seed(samples, opts, device)
        config = {
            "subsets": opts.subset_config(), "options": dataclasses.asdict(opts),
            "checkpoint_config": {k: v for k, v in samples.configs[0].items() if k != "epoch"},
            "restriction": "the seed's batch order restricted to the subset, re-batched in the recipe's batch size (subset_retrains.py)",
            "device": str(device), "threads": torch.get_num_threads(), "workers": opts.workers,
            "wall_time_s": round(time.perf_counter() - start, 3), "peak_memory_gib": peak_memory_gib(device),
            "diagnostics": diag, "versions": {"bayestda": __version__, "torch": str(torch.__version__)},
        }  # fmt: skip
        record = {"losses": losses, "members": members, "train_idx": torch.as_tensor(samples.train.idx).long(),
                  "test_idx": torch.as_tensor(samples.test.idx).long(), "ckpt_epochs": list(samples.epochs),
                  "seed": seed, "config": json.loads(json.dumps(config, default=str))}  # fmt: skip
        atomic_torch_save(record, path)
        done[seed] = path
    return done


def holds_retrains(path: Path, opts: SubsetRetrainOptions) -> bool:
    """Whether `path` is a finished artifact of these subsets (what the runner skips)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["config"]["subsets"] == opts.subset_config()
    except Exception:  # missing or unreadable: the step itself says what is wrong
        return False


def _describe(subsets: dict) -> str:
    return (f"M={subsets['lds_subsets']}, alpha={subsets['lds_alpha']}, subset seed {subsets['lds_subset_seed']}, "
            f"{subsets['loss_dtype']} losses")  # fmt: skip


KEYS = ("losses", "members", "train_idx", "test_idx", "ckpt_epochs", "seed", "config")


def _read(path: Path, remake: str) -> dict:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"LDS retrains {path} do not exist; make them with: {remake}") from None
    except Exception as exc:
        raise UserError(
            f"LDS retrains {path} cannot be read ({type(exc).__name__}); redo them with: {remake}"
        ) from None
    if not isinstance(record, dict) or (missing := [k for k in KEYS if k not in record]):
        raise UserError(f"{path} is not an LDS-retrain file of this package (it lacks "
                        f"{', '.join(missing) if isinstance(record, dict) else 'every field'}); redo it with: {remake}")  # fmt: skip
    if not bool(torch.isfinite(record["losses"]).all()):
        raise UserError(f"{path} has NaN/inf test losses (a diverged retrain); redo it with: {remake}")
    return record


@dataclass
class SubsetRetrains:
    """Every seed's LDS ground truth, checked against the experiment: losses [seeds, M, n_ckpts, n_test] (float64),
    members [M, n] (bool), and the epochs and subset settings they were made with."""

    losses: np.ndarray
    members: np.ndarray
    ckpt_epochs: list[int]
    subsets: dict
    configs: list[dict]


def load_subset_retrains(exp) -> SubsetRetrains:
    """The LDS retrains of every seed of `exp` (a `analysis.statistics.Experiment`): one line naming the command for a file
    that is missing, unreadable, of another seed, run, subsets or indices than the others or the score files."""
    missing = [s for s in exp.seeds if not subset_retrain_file(exp.out_root, exp.model, exp.task, exp.num_per_class,
                                                                s).is_file()]  # fmt: skip
    if missing:
        ids = " ".join(str(read_seeds().index(s)) for s in missing)
        raise UserError(f"no LDS retrains for seeds {', '.join(map(str, missing))} of {exp.name}; make them with: "
                        f"{retrain_command(exp.model, exp.task, exp.num_per_class)} (or per seed: --seed_id "
                        f"{ids}), or through run_experiment.py --methods ...,lds")  # fmt: skip
    records = []
    for seed in exp.seeds:
        path = subset_retrain_file(exp.out_root, exp.model, exp.task, exp.num_per_class, seed)
        fix = _seed_command(exp.model, exp.task, exp.num_per_class, seed, "--overwrite")
        rec = _read(path, fix)
        cc = rec["config"].get("checkpoint_config", {})
        if rec["seed"] != seed or cc.get("seed") != seed or cc.get("model") != exp.model:
            raise UserError(f"{path} is not of {exp.name} seed {seed}; redo it with: {fix}")
        if retrained_since(seed_model_dir(exp.out_root, exp.model, exp.task, exp.num_per_class, seed), cc):
            raise UserError(f"{path} retrained an earlier training run of seed {seed}, which was retrained since; "
                            f"redo it with: {fix}")  # fmt: skip
        if not (np.array_equal(rec["train_idx"].numpy(), exp.train_idx)
                and np.array_equal(rec["test_idx"].numpy(), exp.test_idx)):  # fmt: skip
            raise UserError(f"{path} retrained on other train/test indices than the score files; redo it with: {fix}")
        if exp.epochs and rec["ckpt_epochs"] != exp.epochs:
            raise UserError(f"{path} holds test losses at epochs {rec['ckpt_epochs']}, the score files' checkpoints "
                            f"are of epochs {exp.epochs}; redo it with: {fix}")  # fmt: skip
        if records and (rec["config"]["subsets"] != records[0]["config"]["subsets"]
                        or not torch.equal(rec["members"], records[0]["members"])):  # fmt: skip
            raise UserError(f"{path} retrained other subsets ({_describe(rec['config']['subsets'])}) than seed "
                            f"{exp.seeds[0]} ({_describe(records[0]['config']['subsets'])}); redo it with: {fix}, "
                            "adding the other seed's --lds_* flags")  # fmt: skip
        records.append(rec)
    return SubsetRetrains(
        losses=np.stack([r["losses"].double().numpy() for r in records]), members=records[0]["members"].numpy(),
        ckpt_epochs=records[0]["ckpt_epochs"], subsets=records[0]["config"]["subsets"],
        configs=[r["config"] for r in records],
    )  # fmt: skip
