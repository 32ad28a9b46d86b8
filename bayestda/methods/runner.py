"""Step 2: compute one method's τ on every posterior sample of a seed and write its score file.

The method comes from the registry (`registry.py`): a per-checkpoint method is applied to a
`FunctionalModel` of each checkpoint; a per-seed method (LOO) gets the seed's samples as a whole.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..artifacts.scores import save_scores
from ..core import __version__, plugins
from ..core.errors import UserError
from ..core.io import remove_stale_temp_files
from ..core.paths import score_file
from ..core.usage import peak_memory_gib
from ..data.subsets import Subset
from ..models import families
from ..models.func import FunctionalModel
from ..runs.samples import SeedSamples, load_seed_samples
from . import registry


def _on(subset: Subset, device, dtype) -> Subset:
    return Subset(subset.x.to(device=device, dtype=dtype), subset.y.to(device), subset.idx)


def per_checkpoint(samples: SeedSamples, device, dtype, score_fn, desc: str, memory: dict):
    """Apply score_fn(FunctionalModel, train, test) -> ([n, m], diagnostics) to every checkpoint.

    `memory` sets the FunctionalModel's vmap chunks (`chunk`, `hvp_chunk`)."""
    train, test = _on(samples.train, device, dtype), _on(samples.test, device, dtype)
    loss = families.loss(samples.configs[0])
    scores, diags = [], []
    for epoch, model in zip(
        samples.epochs,
        tqdm(samples.models(device, dtype), total=len(samples.checkpoints), desc=desc, unit="ckpt", leave=False),
        strict=True,
    ):
        try:
            s, d = score_fn(FunctionalModel(model, **memory, loss=loss), train, test)
        except UserError as exc:
            raise UserError(f"{desc} seed {samples.seed}, checkpoint of epoch {epoch}: {exc}") from None
        scores.append(s.detach().float().cpu())
        diags.append(d)
    return torch.stack(scores), diags


def compute(score_name: str, samples: SeedSamples, opts, device) -> tuple[torch.Tensor, list[dict]]:
    """[n_ckpts, n_train, n_test] scores of a method for one seed, and per-checkpoint diagnostics.

    `opts` are the method's resolved options (`resolve_options`)."""
    method = registry.get(score_name)
    if method.per_seed:
        return method.score(samples, opts, device)
    dtype = getattr(torch, getattr(opts, "dtype", None) or "float32")
    memory = {k: getattr(opts, k) for k in ("chunk", "hvp_chunk") if hasattr(opts, k)}
    run_config = samples.configs[0]
    score_fn = lambda fm, train, test: method.score(fm, train, test, opts, run_config)  # noqa: E731
    return per_checkpoint(samples, device, dtype, score_fn, score_name, memory)


def resolve_options(score_name: str, model: str, device, opts=None):
    """A method's options for a model name and device, every default filled in: the method's own defaults for
    `score_name` when `opts` is None. A mismatch between the options' variant and the name is an error."""
    method = registry.get(score_name)
    opts = method.default_options(score_name) if opts is None else opts
    if method.score_name(opts) != score_name:
        raise ValueError(f"options of {method.score_name(opts)} given for {score_name}")
    return method.resolve(opts, families.of_model(model), device)


def run_method(score_name: str, model: str, task: str, num_per_class: int, seeds: list[int], out_root: Path,
               data_root: Path, device, opts=None, overwrite: bool = False) -> dict[int, Path | None]:  # fmt: skip
    """Write a method's score file for every seed not already done; {seed: path, or None if skipped}.

    `score_name` is a score-file name (`gd`, `if-ggn`); `opts` its method's options (default: the defaults)."""
    opts = resolve_options(score_name, model, device, opts)
    done = {}
    desc = f"{score_name} {model} {task} {num_per_class}pc"
    for seed in tqdm(seeds, desc=desc, unit="seed", disable=len(seeds) < 2):
        path = score_file(out_root, model, score_name, task, num_per_class, seed)
        remove_stale_temp_files(path.parent)
        if path.exists() and not overwrite:
            done[seed] = None
            continue
        samples = load_seed_samples(model, task, num_per_class, seed, out_root, data_root)
        start = time.perf_counter()
        scores, diagnostics = compute(score_name, samples, opts, device)
        ckpt_cfg = {k: v for k, v in samples.configs[0].items() if k != "epoch"}
        declared_by = sorted({*plugins.recorded(ckpt_cfg), *filter(None, [registry.origin(score_name)])})
        config = {
            "method": score_name, "options": dataclasses.asdict(opts), "checkpoint_config": ckpt_cfg, "device": str(device),
            "fp32_precision": torch.backends.cudnn.conv.fp32_precision,  # TF32 or IEEE convs on a GPU
            "threads": torch.get_num_threads(),  # CPU kernels sum in another order with another thread count
            "wall_time_s": round(time.perf_counter() - start, 3), "peak_memory_gib": peak_memory_gib(device),
            "diagnostics": diagnostics,
            "versions": {"bayestda": __version__, "torch": str(torch.__version__)},
            **({"plugins": declared_by} if declared_by else {}),  # what a later step loads to read this file
        }  # fmt: skip
        epochs = samples.epochs[-len(scores) :]  # a one-per-seed method: the run's last epoch
        save_scores(
            path,
            scores,
            samples.train.idx,
            samples.test.idx,
            epochs,
            seed,
            score_name,
            config,
            registry.helps_sign(score_name),
        )
        done[seed] = path
    return done
