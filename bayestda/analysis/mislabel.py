"""Mislabel detection by self-influence, with and without the posterior: does the Bayesian view find flipped labels?

**Self-influence** of a training point is a method's τ(z_j, z_j), with each training point as its own test point,
on every posterior sample (the method's step-2 scorer, run with the training subset as the test set). Signs are
aligned with the method's "helps" sign, so that a large value means z_j's own loss depends most on z_j being in the
training set: for LOO-scratch, L(z_j; θ∖j) − L(z_j; θ); for GD, |∇L(z_j)|²; for IF, ∇L(z_j)ᵀH⁻¹∇L(z_j). A flipped
label is one the model can only fit by memorising the point, so the flipped points are expected first in that order
(the usual convention, as dattri's `mislabel_detection_auc`).

**Three rankings per method**, each scored by the AUC of finding the flipped labels (`label_noise.py` records them):
- `mean`: the mean self-influence over every posterior sample (seeds × checkpoints);
- `single`: one posterior sample, the first seed's last checkpoint (what a user without an ensemble gets);
- `z`: the z-score μ/σ over the posterior samples (a self-influence that is large *and* stable).

AUC is the Mann–Whitney U statistic over (flipped, clean) pairs, ties counting one half: the probability that a
flipped point ranks above a clean one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

from ..artifacts.checkpoints import retrained_since
from ..artifacts.manifest import read_inputs
from ..core import __version__, hints
from ..core.errors import UserError
from ..core.io import atomic_torch_save, atomic_write_csv, atomic_write_json, remove_stale_temp_files
from ..core.paths import experiment_name, read_seeds, results_dir, seed_model_dir, self_influence_file
from ..core.usage import peak_memory_gib
from ..data.tasks import task_argv
from ..methods import registry
from ..methods.runner import compute, resolve_options
from ..runs.samples import SeedSamples, load_seed_samples
from . import plots
from .results import up_to_date

METHODS = ("gd", "if-ggn", "if-paper", "trak", "loo-scratch")  # the default set
RANKINGS = ("mean", "single", "z")
SCRIPT = "self_influence.py"


def self_scores(score_name: str, samples: SeedSamples, opts, device) -> tuple[torch.Tensor, list[dict]]:
    """[n_ckpts, n] τ(z_j, z_j) of one seed: the method's scorer with the training subset as the test set."""
    own = dataclasses.replace(samples, test=samples.train)
    scores, diagnostics = compute(score_name, own, opts, device)
    return torch.diagonal(scores, dim1=1, dim2=2), diagnostics


def command(model: str, task: str, n: int, methods, *extra: str) -> str:
    argv = [SCRIPT, "--model", model, *task_argv(task), "--num_per_class", str(n), "--methods", ",".join(methods)]
    return hints.command(argv, *extra)


def run_self_influence(methods: list[str], model: str, task: str, n: int, seeds: list[int], out_root: Path,
                       data_root: Path, device, overwrite: bool = False) -> dict:  # fmt: skip
    """Write each (method, seed) self-influence file not already there; {(method, seed): path or None if skipped}."""
    done = {}
    for seed in tqdm(seeds, desc=f"self-influence {model} {task} {n}pc", unit="seed", disable=len(seeds) < 2):
        samples = None
        for method in methods:
            path = self_influence_file(out_root, model, method, task, n, seed)
            remove_stale_temp_files(path.parent)
            if path.exists() and not overwrite:
                done[(method, seed)] = None
                continue
            samples = samples or load_seed_samples(model, task, n, seed, out_root, data_root)
            opts = resolve_options(method, model, device)
            start = time.perf_counter()
            own, diagnostics = self_scores(method, samples, opts, device)
            epochs = samples.epochs[-len(own) :]  # a one-per-seed method: the run's last epoch
            config = {"options": dataclasses.asdict(opts), "device": str(device), "threads": torch.get_num_threads(),
                      "checkpoint_config": {k: v for k, v in samples.configs[0].items() if k != "epoch"},
                      "wall_time_s": round(time.perf_counter() - start, 3), "peak_memory_gib": peak_memory_gib(device),
                      "diagnostics": diagnostics, "versions": {"bayestda": __version__, "torch": str(torch.__version__)}}  # fmt: skip
            record = {"self": own.float().cpu(), "train_idx": torch.as_tensor(samples.train.idx).long(),
                      "ckpt_epochs": list(epochs), "seed": seed, "method": method,
                      "sign": registry.helps_sign(method), "config": json.loads(json.dumps(config, default=str))}  # fmt: skip
            atomic_torch_save(record, path)
            done[(method, seed)] = path
    return done


# ----------------------------------------------------------------------------- the analysis


def auc(score: np.ndarray, flipped: np.ndarray) -> float:
    """The probability that a flipped point scores above a clean one (ties: one half): Mann–Whitney U / (n₁·n₀)."""
    pos, neg = score[flipped], score[~flipped]
    if not len(pos) or not len(neg):
        raise ValueError("the AUC needs flipped and clean points")
    return float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def auc_interval(score: np.ndarray, flipped: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of the AUC, resampling the flipped and the clean points apart (so every resample
    has as many of each): with a few flips, the AUC of one run is far from exact."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(flipped), np.flatnonzero(~flipped)
    labels = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    draws = [
        auc(score[np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]], labels) for _ in range(n_resamples)
    ]
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def rankings(aligned: np.ndarray) -> dict[str, np.ndarray]:
    """The three rankings of a method's aligned self-influence [seeds, ckpts, n]."""
    flat = aligned.reshape(-1, aligned.shape[-1])
    mu, sigma = flat.mean(0), flat.std(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, mu / sigma, np.sign(mu) * np.inf)
    return {"mean": mu, "single": aligned[0, -1], "z": z}


def load_self_influence(model: str, task: str, n: int, methods: list[str], seeds: list[int], out_root: Path):
    """({method: aligned self-influence [seeds, ckpts, n]}, flipped [n] bool, train_idx): every file checked against
    the experiment (seed, run, indices), and the run trained on noisy labels; one line naming the command if not."""
    name = experiment_name(model, task, n)
    missing = [
        (m, s) for m in methods for s in seeds if not self_influence_file(out_root, model, m, task, n, s).is_file()
    ]
    if missing:
        what = ", ".join(sorted({m for m, _ in missing}))
        raise UserError(f"no self-influence of {what} for seeds {', '.join(sorted({str(s) for _, s in missing}))} of "
                        f"{name}; make it with: {command(model, task, n, methods)}")  # fmt: skip
    out, first = {}, None
    for method in methods:
        per_seed = []
        for seed in seeds:
            path = self_influence_file(out_root, model, method, task, n, seed)
            fix = command(model, task, n, [method], "--seed_id", str(read_seeds().index(seed)), "--overwrite")
            try:
                rec = torch.load(path, map_location="cpu", weights_only=True)
                cc = rec["config"]["checkpoint_config"]
            except Exception as exc:
                raise UserError(f"{path} cannot be read ({type(exc).__name__}); redo it with: {fix}") from None
            if rec["seed"] != seed or rec["method"] != method or cc.get("model") != model or cc.get("seed") != seed:
                raise UserError(f"{path} is not {method} of {name} seed {seed}; redo it with: {fix}")
            if retrained_since(seed_model_dir(out_root, model, task, n, seed), cc):
                raise UserError(f"{path} scored an earlier training run of seed {seed}, retrained since; redo it "
                                f"with: {fix}")  # fmt: skip
            if not bool(torch.isfinite(rec["self"]).all()):
                raise UserError(f"{path} has NaN/inf self-influence; redo it with: {fix}")
            first = first or (rec, path)
            if not torch.equal(rec["train_idx"], first[0]["train_idx"]) or cc.get("label_noise") != first[0]["config"][
                    "checkpoint_config"].get("label_noise"):  # fmt: skip
                raise UserError(f"{path} scored other training points or labels than {first[1]}; redo it with: {fix}")
            per_seed.append(rec["sign"] * rec["self"].double().numpy())
        out[method] = np.stack(per_seed)
    noise = first[0]["config"]["checkpoint_config"].get("label_noise")
    if not noise:
        raise UserError(f"{name} was trained on clean labels, so there is nothing to detect; train a noisy variant "
                        f"with --label_noise 0.1 (model {model}-noisy10) and use that")  # fmt: skip
    flipped = np.zeros(len(first[0]["train_idx"]), dtype=bool)
    flipped[noise["flipped"]] = True
    return out, flipped, first[0]["train_idx"].numpy()


def auc_table(aligned: dict[str, np.ndarray], flipped: np.ndarray) -> pd.DataFrame:
    """Per method: the AUC of each ranking with its 95% bootstrap interval (`auc_interval`), the posterior samples
    used, and the share of flipped points among the top-ranked as many as there are flips (by the mean)."""
    rows = []
    for method, values in aligned.items():
        ranks = rankings(values)
        top = np.argsort(-ranks["mean"], kind="stable")[: flipped.sum()]
        row = {"method": method}
        for r in RANKINGS:
            row[f"auc_{r}"] = auc(ranks[r], flipped)
            row[f"auc_{r}_low"], row[f"auc_{r}_high"] = auc_interval(ranks[r], flipped)
        rows.append({**row, "samples": values.shape[0] * values.shape[1],
                     "precision_at_flips_mean": flipped[top].mean()})  # fmt: skip
    return pd.DataFrame(rows)


def write_mislabel(model: str, task: str, n: int, methods: list[str], seeds: list[int], out_root: Path,
                   overwrite: bool = False) -> Path | None:  # fmt: skip
    """results/<experiment>/mislabel/: auc.csv, self_influence.csv (per training point: flipped, and each method's
    mean, sd and z), summary.json and ROC figures, then manifest.json; None when the manifest records these inputs
    (unless `overwrite`)."""
    aligned, flipped, train_idx = load_self_influence(model, task, n, methods, seeds, out_root)
    out = results_dir(out_root, model, task, n) / "mislabel"
    digest = hashlib.sha1(flipped.tobytes() + b"".join(aligned[m].tobytes() for m in methods)).hexdigest()
    inputs = {"methods": methods, "seeds": seeds, "self_influence_digest": digest}
    if not overwrite and up_to_date(out / "manifest.json", inputs):
        return None
    old = read_inputs(out / "manifest.json")
    if not overwrite and old and not (set(old["methods"]) <= set(methods) and set(old["seeds"]) <= set(seeds)):
        raise UserError(f"{out} holds results of methods {','.join(old['methods'])} on seeds "
                        f"{','.join(map(str, old['seeds']))}; pass those (or more), or --overwrite to replace them")  # fmt: skip
    remove_stale_temp_files(out, recursive=True)
    table = auc_table(aligned, flipped)
    atomic_write_csv(table.set_index("method"), out / "auc.csv", float_format="%.4f")
    per_point = pd.DataFrame({"flipped": flipped}, index=pd.Index(train_idx, name="train_idx"))
    for method, values in aligned.items():
        ranks = rankings(values)
        per_point[f"{method}/mean"], per_point[f"{method}/z"] = ranks["mean"], ranks["z"]
        per_point[f"{method}/sd"] = values.reshape(-1, values.shape[-1]).std(0, ddof=1)
    atomic_write_csv(per_point, out / "self_influence.csv")
    atomic_write_json({"model": model, "task": task, "num_per_class": n, "seeds": seeds, "methods": methods,
                       "n_train": len(flipped), "flipped": int(flipped.sum()),
                       "single_sample": {"seed": seeds[0], "checkpoint": "last"}}, out / "summary.json")  # fmt: skip
    plots.mislabel_roc({m: rankings(v) for m, v in aligned.items()}, flipped, out / "figures" / "roc")
    atomic_write_json({"inputs": inputs}, out / "manifest.json")
    return out


def console_summary(out: Path) -> str:
    table = pd.read_csv(out / "auc.csv", index_col=0)
    summary = json.loads((out / "summary.json").read_text())
    cells = pd.DataFrame({r: [f"{t[f'auc_{r}']:.3f} [{t[f'auc_{r}_low']:.3f}, {t[f'auc_{r}_high']:.3f}]"
                              for _, t in table.iterrows()] for r in RANKINGS}, index=table.index)  # fmt: skip
    return "\n".join([
        f"Mislabel detection, {summary['flipped']} flipped of {summary['n_train']} training labels, {len(summary['seeds'])} "
        f"seeds: AUC [95% interval] by the mean self-influence over the posterior, by one sample (seed "
        f"{summary['seeds'][0]}, last checkpoint), and by its z-score",
        cells.to_string(),
    ])  # fmt: skip
