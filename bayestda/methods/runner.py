"""Step 2: compute one method's τ on every posterior sample of a seed and write its score file.

A seed's samples are its last-5-epoch checkpoints. Their configs say how they were trained (task, n,
architecture, seeds, hyperparameters), so no flag is repeated and mismatches are refused.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import resource  # Unix only
except ImportError:  # pragma: no cover
    resource = None

import torch
from tqdm.auto import tqdm

from .. import __version__, families
from ..checkpoints import read_checkpoint, seed_checkpoints
from ..data import Subset, load_subset
from ..ensemble import indices_digest, train_command
from ..errors import UserError
from ..func import FunctionalModel
from ..paths import score_file, seed_model_dir
from ..scores import save_scores
from ..training import TrainConfig, batch_orders, evaluate
from . import ats, grad_similarity, influence, loo


@dataclass
class SeedSamples:
    """One seed's posterior samples (its checkpoints, read once) and the data they are scored on."""

    seed: int
    checkpoints: list[dict]  # read_checkpoint() records, oldest first
    train: Subset
    test: Subset

    @property
    def configs(self) -> list[dict]:
        return [c["config"] for c in self.checkpoints]

    @property
    def epochs(self) -> list[int]:
        return [c["epoch"] for c in self.configs]

    def models(self, device=None, dtype=None):
        """The checkpoints as models in eval mode (a fresh copy each time)."""
        for ckpt in self.checkpoints:
            yield families.from_state(ckpt["config"], ckpt["state_dict"]).to(device=device, dtype=dtype).eval()


def load_seed_samples(
    model: str, task: str, num_per_class: int, seed: int, out_root: Path, data_root: Path
) -> SeedSamples:
    seed_dir = seed_model_dir(out_root, model, task, num_per_class, seed)
    try:
        train_cmd = train_command(model, task, num_per_class)
    except (ValueError, KeyError):
        raise UserError(
            f"unknown model name {model!r}: use cnn, cnn3, vit, or with a posterior suffix, e.g. cnn-deinit"
        ) from None
    paths = seed_checkpoints(seed_dir, train_cmd)
    checkpoints = [read_checkpoint(p) for p in paths]
    for path, ckpt in zip(paths, checkpoints, strict=True):
        cfg = ckpt["config"]
        if (cfg["model"], cfg["task"], cfg["num_per_class"], cfg["seed"]) != (model, task, num_per_class, seed):
            raise UserError(f"{path} was trained as {cfg['model']} {cfg['task']} {cfg['num_per_class']}pc seed {cfg['seed']}, "
                            f"not {model} {task} {num_per_class}pc seed {seed}; retrain it with --overwrite")  # fmt: skip
    pixels = families.raw_pixels(families.family(checkpoints[0]["config"]))
    train = load_subset(task, "train", num_per_class, data_root, out_root, pixels)
    if indices_digest(train.idx) != checkpoints[0]["config"]["train_idx_sha1"]:
        raise UserError(f"the training subset data/{task}/train_subset_{num_per_class}pc.txt changed since {seed_dir} was trained; "
                        f"retrain with: {train_cmd} --overwrite")  # fmt: skip
    return SeedSamples(seed, checkpoints, train, load_subset(task, "test", None, data_root, out_root, pixels))


def _on(subset: Subset, device, dtype) -> Subset:
    return Subset(subset.x.to(device=device, dtype=dtype), subset.y.to(device), subset.idx)


def per_checkpoint(samples: SeedSamples, device, dtype, score_fn, desc: str, memory: dict):
    """Apply score_fn(FunctionalModel, train, test) -> ([n, m], diagnostics) to every checkpoint.

    `memory` sets the FunctionalModel's vmap chunks (`chunk`, `hvp_chunk`)."""
    train, test = _on(samples.train, device, dtype), _on(samples.test, device, dtype)
    scores, diags = [], []
    for epoch, model in zip(
        samples.epochs,
        tqdm(samples.models(device, dtype), total=len(samples.checkpoints), desc=desc, unit="ckpt", leave=False),
        strict=True,
    ):
        try:
            s, d = score_fn(FunctionalModel(model, **memory), train, test)
        except UserError as exc:
            raise UserError(f"{desc} seed {samples.seed}, checkpoint of epoch {epoch}: {exc}") from None
        scores.append(s.detach().float().cpu())
        diags.append(d)
    return torch.stack(scores), diags


def checkpoint_scorer(method: str, options: dict, cfg: dict):
    """The per-checkpoint scorer (FunctionalModel, train, test) -> ([n_train, n_test], diagnostics) of a method."""

    loss_dtype = getattr(torch, options.get("loss_dtype", "float32"))

    def if_paper(fm, tr, te):
        p = options.get("lissa", influence.PAPER_LISSA)
        scores, s_train, g_train = influence.if_paper(fm, tr, te, p["damping"], p["scale"], p["batch_size"])
        if not options.get("diagnostics", True):
            return scores, {}
        gd = grad_similarity.grad_dot_and_cos(fm, tr, te)[0]
        return scores, influence.lissa_diagnostics(
            fm, tr, g_train, s_train, gd, scores, p["damping"], p["scale"], p["batch_size"]
        )

    scorers = {
        "gd": lambda fm, tr, te: (grad_similarity.grad_dot_and_cos(fm, tr, te)[0], {}),
        "gc": lambda fm, tr, te: (grad_similarity.grad_dot_and_cos(fm, tr, te)[1], {}),
        "ats": lambda fm, tr, te: (
            ats.ats_scores(fm, tr, te, cfg["lr"], cfg["weight_decay"], loss_dtype=loss_dtype),
            {},
        ),
        "if-paper": if_paper,
        "if-ggn": lambda fm, tr, te: (influence.if_ggn(fm, tr, te, options["damping"]), {}),
        "if-cg": lambda fm, tr, te: influence.if_cg(
            fm, tr, te, options["damping"], options["tol"], options["max_iter"]
        ),
    }
    if method not in scorers:
        raise UserError(f"unknown method {method!r}")
    return scorers[method]


def resolve_stack(stack: int | str, config: dict, device) -> int:
    """`--stack auto` by device; 1 for models with training-time randomness, whose retrains cannot be stacked."""
    if not loo.stackable(config):
        return 1
    return loo.AUTO_STACK.get(torch.device(device).type, 1) if stack == "auto" else int(stack)


def retrain_context(protocol: str, samples: SeedSamples, device, loss_dtype: torch.dtype = torch.float32):
    """What every LOO retrain of a seed shares: `scratch` retrains from the initialisation and is read at the
    checkpoints' epochs; `paper`/`paired` continue from each checkpoint and are read at the last epoch."""
    cfg = samples.configs[0]
    scratch = protocol == "scratch"
    return loo.RetrainContext(
        config=cfg, train_data=samples.train, test_data=samples.test.to(device),
        cfg=TrainConfig.from_config(cfg), orders=batch_orders(len(samples.train), cfg["epochs"], cfg["batch_seed"]),
        start_states=[] if scratch else [c["state_dict"] for c in samples.checkpoints],
        eval_epochs=tuple(samples.epochs) if scratch else (cfg["epochs"],), device=str(device), loss_dtype=loss_dtype,
    )  # fmt: skip


def loo_seed_scores(
    protocol: str, samples: SeedSamples, workers: int, device, loss_dtype: torch.dtype = torch.float32,
    stack: int | str = 1,
) -> tuple[torch.Tensor, list[dict]]:  # fmt: skip
    """LOO retrains one seed as a whole (`scratch`), or continues from each of its checkpoints."""
    cfg = samples.configs[0]
    ctx = retrain_context(protocol, samples, device, loss_dtype)
    base = torch.stack([evaluate(m, samples.test, loss_dtype)[0] for m in samples.models(device)])
    stack = resolve_stack(stack, cfg, device)
    scores, diag = loo.loo_scores(protocol, ctx, base, workers, stack)
    return scores, [{**diag, "stack": stack}]


def compute(method: str, samples: SeedSamples, options: dict, device) -> tuple[torch.Tensor, list[dict]]:
    """[n_ckpts, n_train, n_test] scores of `method` for one seed, and per-checkpoint diagnostics."""
    family, _, variant = method.partition("-")
    if family == "loo":
        loss_dtype = getattr(torch, options.get("loss_dtype", "float32"))
        return loo_seed_scores(variant, samples, options.get("workers", 1), device, loss_dtype, options.get("stack", 1))
    dtype = getattr(torch, options.get("dtype", "float32"))
    memory = {k: options[k] for k in ("chunk", "hvp_chunk") if k in options}
    return per_checkpoint(
        samples, device, dtype, checkpoint_scorer(method, options, samples.configs[0]), method, memory
    )


def peak_memory_gib(device) -> dict:
    """Peak memory of this process so far: resident (with its finished worker processes, e.g. LOO's) and,
    on a GPU, torch's allocations. Recorded in every score file, so an experiment's memory is known."""
    peak = {}
    if resource is not None:
        scale = 2**30 if sys.platform == "darwin" else 2**20  # ru_maxrss: bytes on macOS, KiB on Linux
        rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        peak["rss"] = round(rss / scale, 3)
    if torch.device(device).type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return peak


def run_method(method: str, model: str, task: str, num_per_class: int, seeds: list[int], out_root: Path, data_root: Path,
               device, options: dict, overwrite: bool = False) -> dict[int, Path | None]:  # fmt: skip
    """Write `method`'s score file for every seed not already done; {seed: path, or None if skipped}."""
    done = {}
    for seed in tqdm(seeds, desc=f"{method} {model} {task} {num_per_class}pc", unit="seed", disable=len(seeds) < 2):
        path = score_file(out_root, model, method, task, num_per_class, seed)
        if path.exists() and not overwrite:
            done[seed] = None
            continue
        samples = load_seed_samples(model, task, num_per_class, seed, out_root, data_root)
        start = time.perf_counter()
        scores, diagnostics = compute(method, samples, options, device)
        ckpt_cfg = {k: v for k, v in samples.configs[0].items() if k != "epoch"}
        config = {
            "method": method, "options": options, "checkpoint_config": ckpt_cfg, "device": str(device),
            "fp32_precision": torch.backends.cudnn.conv.fp32_precision,  # TF32 or IEEE convs on a GPU
            "wall_time_s": round(time.perf_counter() - start, 3), "peak_memory_gib": peak_memory_gib(device),
            "diagnostics": diagnostics,
            "versions": {"bayestda": __version__, "torch": str(torch.__version__)},
        }  # fmt: skip
        save_scores(path, scores, samples.train.idx, samples.test.idx, samples.epochs, seed, method, config)
        done[seed] = path
    return done
