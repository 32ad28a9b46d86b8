"""Step 3: τ as a random variable: per-pair mean μ, std σ and p-values across posterior samples.

For k = 1..5 (as in the paper), each seed's τ is averaged over its last k checkpoints, and μ, σ
(ddof=1, as pandas in the original) are taken across seeds. A method with one τ per seed
(`Method.one_per_seed`: TracIn over the whole run) has only k = 1; where the others are compared at a
larger k (step 4), it enters with that one τ per seed. Two p-values per pair:
- `paper`: 2·Φ(−|μ/σ|), exactly the original's. It uses σ rather than σ/√n, so it is a
  signal-to-noise score, not a test of the mean.
- `t`: a one-sample t-test of H0: E[τ] = 0 across seeds, plus Benjamini–Hochberg adjusted values.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ..artifacts.checkpoints import retrained_since
from ..artifacts.scores import load_scores
from ..core.errors import UserError
from ..core.paths import experiment_name, read_seeds, results_dir, score_file, seed_model_dir, split_experiment_name
from ..data.tasks import get_task
from ..methods import registry
from ..methods.registry import score_command

P_TYPES = ("paper", "t")
ALPHA = 0.05


# ----------------------------------------------------------------------------- the maths


def average_last_checkpoints(scores: np.ndarray, k: int) -> np.ndarray:
    """[seeds, ckpts, train, test] -> [seeds, train, test]: each seed's mean over its last k checkpoints."""
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k = {k}, but the scores hold {scores.shape[1]} checkpoint(s) per seed")
    return scores[:, -k:].mean(axis=1)


def mean_and_std(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ and σ (sample std, ddof=1) across seeds (axis 0)."""
    return per_seed.mean(axis=0), per_seed.std(axis=0, ddof=1)


def p_values_paper(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """2·Φ(−|μ/σ|). σ = 0 gives p = 0 when μ ≠ 0 (pure signal) and p = 1 when μ = 0 (nothing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(mu) / sigma
    z = np.where((sigma == 0) & (mu == 0), 0.0, z)
    return 2 * stats.norm.sf(z)


def p_values_ttest(per_seed: np.ndarray) -> np.ndarray:
    """Two-sided one-sample t-test of E[τ] = 0 across seeds (axis 0); constant zero τ gives p = 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.ttest_1samp(per_seed, 0.0, axis=0).pvalue
    return np.where(np.isnan(p), 1.0, p)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values over all pairs of one method and k."""
    return stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)


@dataclass
class PairStats:
    """Everything step 3 derives for one method and one k, each [train, test]."""

    mu: np.ndarray
    sigma: np.ndarray
    p: dict[str, np.ndarray]  # "paper", "t"
    p_fdr: dict[str, np.ndarray]


def pair_stats(scores: np.ndarray, k: int) -> PairStats:
    per_seed = average_last_checkpoints(scores, k)
    mu, sigma = mean_and_std(per_seed)
    p = {"paper": p_values_paper(mu, sigma), "t": p_values_ttest(per_seed)}
    return PairStats(mu, sigma, p, {name: fdr_bh(v) for name, v in p.items()})


def summary_rows(method: str, k: int, s: PairStats, n_seeds: int) -> list[dict]:
    return [
        {
            "method": method,
            "num_ckpts": k,
            "p_type": name,
            "mean_p": s.p[name].mean(),
            "median_p": np.median(s.p[name]),
            "frac_p_below_0.05": (s.p[name] < ALPHA).mean(),
            "frac_p_fdr_below_0.05": (s.p_fdr[name] < ALPHA).mean(),
            "frac_sigma_above_abs_mu": (s.sigma > np.abs(s.mu)).mean(),
            "n_pairs": s.mu.size,
            "n_seeds": n_seeds,
        }
        for name in P_TYPES
    ]


# ----------------------------------------------------------------------------- loading an experiment


@dataclass
class Experiment:
    """The validated scores of one experiment (model, task, n) for chosen methods and seeds."""

    model: str
    task: str
    num_per_class: int
    out_root: Path
    methods: list[str]
    seeds: list[int]
    train_idx: np.ndarray
    test_idx: np.ndarray
    n_ckpts: int  # checkpoints per seed of the score files (a one-per-seed method has 1)
    stacked: dict[str, np.ndarray]  # method -> float32 [seeds, ckpts, train, test]
    signs: dict[str, int]
    configs: dict[str, dict]
    epochs: list[int] = field(default_factory=list)  # the checkpoint epochs of the per-checkpoint score files

    @property
    def name(self) -> str:
        return experiment_name(self.model, self.task, self.num_per_class)

    @property
    def results_dir(self) -> Path:
        return results_dir(self.out_root, self.model, self.task, self.num_per_class)

    def samples_per_seed(self, method: str) -> int:
        return self.stacked[method].shape[1]

    def k_for(self, method: str, k: int) -> int:
        """The k a method is taken at when the others are at k: k, or 1 for a method with one τ per seed."""
        return min(k, self.samples_per_seed(method))

    def one_per_seed(self) -> list[str]:
        return [m for m in self.methods if self.samples_per_seed(m) < self.n_ckpts]

    def scores(self, method: str) -> np.ndarray:
        """[seeds, ckpts, train, test] in float64 (the last n_ckpts checkpoints of every seed)."""
        return self.stacked[method].astype(np.float64)

    def input_digest(self) -> str:
        """Changes whenever any score, index, seed or method config changes."""
        h = hashlib.sha1(f"{self.methods}{self.seeds}".encode())
        h.update(self.train_idx.tobytes() + self.test_idx.tobytes())
        for method in self.methods:
            h.update(json.dumps(self.configs[method], sort_keys=True, default=str).encode())
            h.update(np.ascontiguousarray(self.stacked[method]).tobytes())
        return h.hexdigest()


def parse_experiment_name(name: str) -> tuple[str, str, int]:
    """`cnn3-deinit_mnist3_50pc` -> ("cnn3-deinit", "mnist3", 50)."""
    parsed = split_experiment_name(name)
    if parsed is None:
        raise UserError(f"--experiment {name!r} is not of the form <model>_<task>_<n>pc, e.g. cnn_mnist3_50pc")
    get_task(parsed[1])
    return parsed


def remake(model: str, method: str, task: str, num_per_class: int, seed: int) -> str:
    """The step-2 command that writes one seed's score file again."""
    seed_id = str(read_seeds().index(seed))
    return score_command(model, method, task, num_per_class, "--seed_id", seed_id, "--overwrite")


SEED_KEYS = ("seed", "init_seed", "batch_seed")  # what differs between the seeds of one ensemble


def _run_of(record: dict) -> str:
    """What must be the same in every score file of an experiment: the checkpoints' epochs and the training
    settings of their run, apart from its seed. (A one-per-seed method's file holds the last epoch only.)"""
    config = {k: v for k, v in record["config"]["checkpoint_config"].items() if k not in SEED_KEYS}
    return json.dumps({"ckpt_epochs": record["ckpt_epochs"], "run": config}, sort_keys=True)


def check_score_files(records: dict, paths: dict, model: str, task: str, num_per_class: int, out_root: Path) -> None:
    """Refuse a score file that is not of this experiment: another method, seed, model (architecture and posterior
    mode included), task or n; scored on other checkpoints (epochs, run length, settings) than most of the others;
    on other train/test indices; or made from a run that has since been retrained."""
    name = experiment_name(model, task, num_per_class)
    first = next(r for by_seed in records.values() for r in by_seed.values())
    single = {m: _one_per_seed(m) for m in records}
    counted = [m for m in records if not single[m]] or list(records)  # per-checkpoint methods set the usual run
    runs = Counter(_run_of(r) for m in counted for r in records[m].values() if _has_ckpt_config(r))
    usual = json.loads(runs.most_common(1)[0][0]) if runs else None
    for m, by_seed in records.items():
        for s, rec in by_seed.items():
            fix = f"recompute it with: {remake(model, m, task, num_per_class, s)}"
            where = f"score file {paths[m][s]}"
            if not _has_ckpt_config(rec):
                raise UserError(f"{where} does not say which checkpoints it scored (no checkpoint_config), so it "
                                f"is not from this package's step 2; {fix}")  # fmt: skip
            cc = rec["config"]["checkpoint_config"]
            want = {"method": m, "seed": s, "model": model, "task": task, "num_per_class": num_per_class}
            got = {"method": rec["method"], "seed": rec["seed"], **{k: cc.get(k) for k in list(want)[2:]}}
            want["trained seed"], got["trained seed"] = s, cc.get("seed")
            if diff := [f"{k} {got[k]!r}, not {want[k]!r}" for k in want if got[k] != want[k]]:
                raise UserError(f"{where} is not of {name} {m} seed {s} ({'; '.join(diff)}); {fix}")
            if not (
                torch.equal(rec["train_idx"], first["train_idx"]) and torch.equal(rec["test_idx"], first["test_idx"])
            ):
                raise UserError(f"{where} scores other train/test indices (or order) than the others; {fix}")
            expected = {**usual, "ckpt_epochs": usual["ckpt_epochs"][-1:]} if single[m] else usual
            if (run := json.loads(_run_of(rec))) != expected:
                if run["ckpt_epochs"] != expected["ckpt_epochs"]:
                    what = f"the checkpoints of epochs {run['ckpt_epochs']}"
                    if single[m]:
                        what += f" (it gives one τ per seed, at the run's last epoch {expected['ckpt_epochs'][0]})"
                else:
                    keys = run["run"].keys() | expected["run"].keys()
                    differ = sorted(k for k in keys if run["run"].get(k) != expected["run"].get(k))
                    what = f"checkpoints of a run trained with other settings ({', '.join(differ)} differ)"
                n = sum(runs.values())
                raise UserError(f"{where} scored {what}, unlike {runs.most_common(1)[0][1]} of the {n} score files "
                                f"(epochs {usual['ckpt_epochs']}); {fix}")  # fmt: skip
            if retrained_since(seed_model_dir(out_root, model, task, num_per_class, s), cc):
                raise UserError(f"{where} scored an earlier training run of seed {s}, which was retrained since; {fix}")


def _one_per_seed(score_name: str) -> bool:
    try:
        return registry.get(score_name).one_per_seed
    except UserError:  # not a registered method: its file is checked as a per-checkpoint one
        return False


def _has_ckpt_config(record: dict) -> bool:
    return isinstance(record["config"].get("checkpoint_config"), dict)


def load_experiment(
    model: str,
    task: str,
    num_per_class: int,
    out_root: Path,
    methods: list[str],
    seeds: list[int] | None = None,
    allow_partial: bool = False,
) -> Experiment:
    """Find and validate every (method, seed) score file; clear errors for whatever is missing or off."""
    all_seeds = read_seeds()
    seeds = list(seeds) if seeds is not None else all_seeds
    path = {m: {s: score_file(out_root, model, m, task, num_per_class, s) for s in seeds} for m in methods}
    missing = {m: [s for s in seeds if not path[m][s].is_file()] for m in methods}
    complete = [s for s in seeds if all(s not in missing[m] for m in methods)]
    if any(missing.values()) and not (allow_partial and complete):
        lines = []
        for m, miss in missing.items():
            if miss:
                cmd = score_command(model, m, task, num_per_class)
                lines.append(f"{m} for seeds {','.join(map(str, miss))} (make them with: {cmd})")
        hint = "" if allow_partial else "; or pass --allow_partial to use only the seeds that have every method"
        raise UserError(f"missing score files under {out_root / 'tda_scores' / model}: " + "; ".join(lines) + hint)
    if len(complete) < len(seeds):
        print(f"warning: --allow_partial: using only the {len(complete)} seeds with every method: {complete}")
    seeds = complete
    if len(seeds) < 2:
        raise UserError(f"{len(seeds)} seed(s) available, but σ and p-values need at least 2 seeds per pair")

    records = {
        m: {s: load_scores(path[m][s], remake(model, m, task, num_per_class, s)) for s in seeds} for m in methods
    }
    check_score_files(records, path, model, task, num_per_class, out_root)
    first = records[methods[0]][seeds[0]]
    signs = {m: records[m][seeds[0]]["sign"] for m in methods}
    configs = {m: records[m][seeds[0]]["config"] for m in methods}
    stacked = {m: np.stack([records[m][s]["scores"].numpy() for s in seeds]) for m in methods}
    return Experiment(
        model, task, num_per_class, out_root, list(methods), seeds,
        first["train_idx"].numpy(), first["test_idx"].numpy(), max(a.shape[1] for a in stacked.values()), stacked,
        signs, configs, max((list(records[m][seeds[0]]["ckpt_epochs"]) for m in methods), key=len),
    )  # fmt: skip


# ----------------------------------------------------------------------------- step 3


def pair_frame(values: np.ndarray, exp: Experiment) -> pd.DataFrame:
    """Train indices as rows, test indices as columns: the dataset indices label every pair."""
    return pd.DataFrame(values, index=pd.Index(exp.train_idx, name="train_idx"), columns=exp.test_idx)
