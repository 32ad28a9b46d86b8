"""Step 2: compute one method's τ on every posterior sample of a seed and write its score file.

A seed's samples are its last-5-epoch checkpoints. Their configs say how they were trained (task, n,
architecture, seeds, hyperparameters), so no flag is repeated and mismatches are refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoints import read_checkpoint, seed_checkpoints
from ..data import Subset, load_subset
from ..ensemble import indices_digest, train_command
from ..errors import UserError
from ..func import FunctionalModel
from ..models import build_model
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
            model = build_model(ckpt["config"]["arch"], ckpt["config"]["task"])
            model.load_state_dict(ckpt["state_dict"])
            yield model.to(device=device, dtype=dtype).eval()


def load_seed_samples(
    model: str, task: str, num_per_class: int, seed: int, out_root: Path, data_root: Path
) -> SeedSamples:
    seed_dir = seed_model_dir(out_root, model, task, num_per_class, seed)
    try:
        train_cmd = train_command(model, task, num_per_class)
    except (ValueError, KeyError):
        raise UserError(
            f"unknown model name {model!r}: use cnn, cnn3, or with a posterior suffix, e.g. cnn-deinit"
        ) from None
    paths = seed_checkpoints(seed_dir, train_cmd)
    checkpoints = [read_checkpoint(p) for p in paths]
    for path, ckpt in zip(paths, checkpoints, strict=True):
        cfg = ckpt["config"]
        if (cfg["model"], cfg["task"], cfg["num_per_class"], cfg["seed"]) != (model, task, num_per_class, seed):
            raise UserError(f"{path} was trained as {cfg['model']} {cfg['task']} {cfg['num_per_class']}pc seed {cfg['seed']}, "
                            f"not {model} {task} {num_per_class}pc seed {seed}; retrain it with --overwrite")  # fmt: skip
    train = load_subset(task, "train", num_per_class, data_root, out_root)
    if indices_digest(train.idx) != checkpoints[0]["config"]["train_idx_sha1"]:
        raise UserError(f"the training subset data/{task}/train_subset_{num_per_class}pc.txt changed since {seed_dir} was trained; "
                        "retrain with train_cnn.py --overwrite")  # fmt: skip
    return SeedSamples(seed, checkpoints, train, load_subset(task, "test", None, data_root, out_root))


def _on(subset: Subset, device, dtype) -> Subset:
    return Subset(subset.x.to(device=device, dtype=dtype), subset.y.to(device), subset.idx)


def per_checkpoint(samples: SeedSamples, device, dtype, score_fn, desc: str):
    """Apply score_fn(FunctionalModel, train, test) -> ([n, m], diagnostics) to every checkpoint."""
    train, test = _on(samples.train, device, dtype), _on(samples.test, device, dtype)
    scores, diags = [], []
    for model in tqdm(
        samples.models(device, dtype), total=len(samples.checkpoints), desc=desc, unit="ckpt", leave=False
    ):
        s, d = score_fn(FunctionalModel(model), train, test)
        scores.append(s.detach().float().cpu())
        diags.append(d)
    return torch.stack(scores), diags


def compute(method: str, samples: SeedSamples, options: dict, device) -> tuple[torch.Tensor, dict]:
    """[n_ckpts, n_train, n_test] scores of `method` for one seed, and what to record about the run."""
    family, _, variant = method.partition("-")
    cfg = samples.configs[0]
    dtype = getattr(torch, options.get("dtype", "float32"))
    if family in ("gd", "gc"):
        pick = 0 if family == "gd" else 1
        return per_checkpoint(
            samples, device, dtype, lambda fm, tr, te: (grad_similarity.grad_dot_and_cos(fm, tr, te)[pick], {}), method
        )
    if family == "ats":
        return per_checkpoint(samples, device, dtype,
                              lambda fm, tr, te: (ats.ats_scores(fm, tr, te, cfg["lr"], cfg["weight_decay"]), {}), method)  # fmt: skip
    if family == "if" and variant == "paper":
        p = influence.PAPER_LISSA

        def paper(fm, tr, te):
            scores, s_train, g_train = influence.if_paper(fm, tr, te, p["damping"], p["scale"], p["batch_size"])
            if not options.get("diagnostics", True):
                return scores, {}
            gd = grad_similarity.grad_dot_and_cos(fm, tr, te)[0]
            return scores, influence.lissa_diagnostics(
                fm, tr, g_train, s_train, gd, scores, p["damping"], p["scale"], p["batch_size"]
            )

        return per_checkpoint(samples, device, dtype, paper, method)
    if family == "if" and variant == "ggn":
        return per_checkpoint(
            samples, device, dtype, lambda fm, tr, te: (influence.if_ggn(fm, tr, te, options["damping"]), {}), method
        )
    if family == "if" and variant == "cg":
        return per_checkpoint(samples, device, dtype,
                              lambda fm, tr, te: influence.if_cg(fm, tr, te, options["damping"], options["tol"], options["max_iter"]), method)  # fmt: skip
    if family == "loo":
        train_cfg = TrainConfig(
            epochs=cfg["epochs"], lr=cfg["lr"], weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"]
        )
        ctx = loo.RetrainContext(
            arch=cfg["arch"], task=cfg["task"], train_data=samples.train, test_data=samples.test.to(device), cfg=train_cfg,
            orders=batch_orders(len(samples.train), cfg["epochs"], cfg["batch_seed"]), init_seed=cfg["init_seed"],
            start_states=[c["state_dict"] for c in samples.checkpoints] if variant != "scratch" else [],
            eval_epochs=tuple(samples.epochs) if variant == "scratch" else (cfg["epochs"],), device=str(device),
        )  # fmt: skip
        base = torch.stack([evaluate(m, samples.test)[0] for m in samples.models(device)])
        scores, diag = loo.loo_scores(variant, ctx, base, options.get("workers", 1))
        return scores, [diag]
    raise UserError(f"unknown method {method!r}")


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
            "wall_time_s": round(time.perf_counter() - start, 3), "diagnostics": diagnostics,
            "versions": {"bayestda": __version__, "torch": str(torch.__version__)},
        }  # fmt: skip
        save_scores(path, scores, samples.train.idx, samples.test.idx, samples.epochs, seed, method, config)
        done[seed] = path
    return done
