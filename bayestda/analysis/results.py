"""Steps 3 and 4: write the p-value and correlation results of one experiment under results/<experiment>/.

Each step writes a manifest last (`manifest`). A rerun on unchanged inputs is skipped unless `overwrite`. The
tables combine methods, so results are never silently replaced by those of fewer methods or seeds (that needs
`overwrite`), and step 4 only runs on the same methods, seeds and score files as step 3's results beside it.
Both steps end by regenerating the folder's README.md (`report.write_results_page`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..artifacts.manifest import CORRELATIONS_MANIFEST, PVALUES_MANIFEST, read_manifest, stats_command
from ..core import __version__
from ..core.errors import UserError
from ..core.io import atomic_write_csv, atomic_write_json, remove_stale_temp_files
from . import plots
from .correlations import SIGNED, correlation_tables
from .report import write_results_page
from .statistics import P_TYPES, Experiment, pair_frame, pair_stats, summary_rows


def up_to_date(manifest: Path, inputs: dict) -> bool:
    """Whether a step's manifest records exactly these inputs (its results are of them)."""
    return (recorded := read_manifest(manifest)) is not None and recorded["inputs"] == inputs


def step_inputs(exp: Experiment, **extra) -> dict:
    """What a step's results depend on: methods, seeds, a digest of the score files, and the step's own `extra`."""
    return {"methods": exp.methods, "seeds": exp.seeds, "score_digest": exp.input_digest(), **extra}


def open_results(exp: Experiment, folder: str, inputs: dict, step: str, overwrite: bool = False) -> Path | None:
    """results/<experiment>/<folder>/ of an optional step (5, 6), ready to be written: None when its manifest records
    these `inputs` (up to date), unless `overwrite`; results of methods or seeds this run lacks are not replaced
    without `overwrite`; temp files of killed writers are removed. The step writes `manifest.json` last."""
    out = exp.results_dir / folder
    manifest = out / "manifest.json"
    if not overwrite and up_to_date(manifest, inputs):
        return None
    if not overwrite:
        _refuse_replacing_more(manifest, exp, step)
    if out.exists():
        remove_stale_temp_files(out, recursive=True)
    return out


def check_num_ckpts(flag: str, k: int | None, exp: Experiment) -> int:
    """A checkpoints-per-seed flag: None means all that each score file holds; a k outside 1..that is refused,
    never clamped."""
    if k is None:
        return exp.n_ckpts
    if not 1 <= k <= exp.n_ckpts:
        raise UserError(f"{flag} {k}: the score files of {exp.name} hold {exp.n_ckpts} checkpoints per seed, "
                        f"so use 1..{exp.n_ckpts}")  # fmt: skip
    return k


def _refuse_replacing_more(manifest: Path, exp: Experiment, step: str) -> None:
    """Results of methods or seeds this run lacks are not replaced without --overwrite."""
    old = read_manifest(manifest)
    if old is None:
        return
    methods, seeds = old["inputs"]["methods"], old["inputs"]["seeds"]
    if set(methods) <= set(exp.methods) and set(seeds) <= set(exp.seeds):
        return
    lost = [m for m in methods if m not in exp.methods] + [f"seed {s}" for s in seeds if s not in exp.seeds]
    raise UserError(f"{exp.results_dir} holds {step} results of methods {','.join(methods)} on seeds "
                    f"{','.join(map(str, seeds))}; this run would replace them without {', '.join(lost)}: pass "
                    f"--methods {','.join(dict.fromkeys(methods + exp.methods))} (and every seed), or --overwrite "
                    "to replace them")  # fmt: skip


def write_pvalues(exp: Experiment, max_ckpts: int | None = None, overwrite: bool = False) -> Path | None:
    """Per-pair μ, σ and p-values for every method and k, mean_p_values.csv, summary.csv and figures.

    Returns the results folder, or None when it was already up to date.
    """
    out = exp.results_dir
    ks = list(range(1, check_num_ckpts("--max_ckpts", max_ckpts, exp) + 1))
    manifest = out / PVALUES_MANIFEST
    inputs = step_inputs(exp, num_ckpts=ks)
    if not overwrite and up_to_date(manifest, inputs):
        return None
    if not overwrite:
        _refuse_replacing_more(manifest, exp, "step-3")
    remove_stale_temp_files(out, recursive=True)
    manifest.unlink(missing_ok=True)  # the folder is unfinished until the end
    for folder in ("mu", "sigma", "pvalues"):  # nothing of methods or k this run drops stays behind
        shutil.rmtree(out / folder, ignore_errors=True)
    rows, mean_p = [], {t: pd.DataFrame(index=pd.Index(ks, name="num_ckpts")) for t in P_TYPES}
    last_p = {t: {} for t in P_TYPES}
    for method in tqdm(exp.methods, desc=f"p-values {exp.name}", unit="method"):
        scores = exp.scores(method)
        for k in ks[: exp.samples_per_seed(method)]:  # a one-per-seed method (TracIn) has only k = 1
            s = pair_stats(scores, k)
            atomic_write_csv(pair_frame(s.mu, exp), out / "mu" / f"{method}_k{k}.csv")
            atomic_write_csv(pair_frame(s.sigma, exp), out / "sigma" / f"{method}_k{k}.csv")
            for t in P_TYPES:
                atomic_write_csv(pair_frame(s.p[t], exp), out / "pvalues" / f"{method}_k{k}_{t}.csv")
                mean_p[t].loc[k, method] = s.p[t].mean()
            atomic_write_csv(pair_frame(s.p_fdr["t"], exp), out / "pvalues" / f"{method}_k{k}_t_fdr.csv")
            rows += summary_rows(method, k, s, len(exp.seeds))
        plots.mu_sigma_scatter(s.mu, s.sigma, method, out / "figures" / f"mu_sigma_{method}_k{k}")
        for t in P_TYPES:
            last_p[t][method] = s.p[t]
    for t in P_TYPES:
        name = "mean_p_values.csv" if t == "paper" else f"mean_p_values_{t}.csv"
        atomic_write_csv(mean_p[t], out / name, float_format="%.6f")
        plots.mean_p_vs_checkpoints(mean_p[t], out / "figures" / f"mean_p_vs_num_ckpts_{t}", t)
        plots.p_value_histograms(last_p[t], out / "figures" / f"p_value_hist_{t}_k{ks[-1]}", t)
    atomic_write_csv(pd.DataFrame(rows).set_index(["method", "num_ckpts", "p_type"]), out / "summary.csv", "%.6f")
    one = exp.one_per_seed()
    atomic_write_json({"inputs": inputs, "score_configs": exp.configs, "one_per_seed": one, "bayestda": __version__},
                      manifest)  # fmt: skip
    if one:
        print(f"{', '.join(one)}: one τ per seed (over the whole run), so only k = 1")
    write_results_page(out)
    return out


def write_correlations(exp: Experiment, num_ckpts: int | None = None, overwrite: bool = False) -> Path | None:
    """Pearson and Spearman method × method matrices (raw and sign-aligned) as CSV and heatmaps."""
    out = exp.results_dir
    k = check_num_ckpts("--num_ckpts", num_ckpts, exp)
    manifest = out / CORRELATIONS_MANIFEST
    inputs = step_inputs(exp, num_ckpts=k)
    check_step3_matches(exp, k)
    if not overwrite and up_to_date(manifest, inputs):
        return None
    if not overwrite:
        _refuse_replacing_more(manifest, exp, "step-4")
    remove_stale_temp_files(out, recursive=True)
    manifest.unlink(missing_ok=True)
    shutil.rmtree(out / "correlations", ignore_errors=True)
    per_method = {  # a one-per-seed method enters with its one τ per seed
        m: pair_stats(exp.scores(m), exp.k_for(m, k))
        for m in tqdm(exp.methods, desc=f"statistics {exp.name}", unit="method")
    }
    tables = correlation_tables(per_method, exp.signs)
    one = [m for m in exp.one_per_seed() if k > 1]
    for (kind, q, version), table in tqdm(tables.items(), desc="correlation figures", unit="matrix"):
        stem = f"{kind}_{q}_{version}"
        atomic_write_csv(table, out / "correlations" / f"{stem}.csv", float_format="%.6f")
        if version == "aligned" and q not in SIGNED:  # σ and p have no sign: the same matrix as raw, one figure
            continue
        title = f"{kind.capitalize()} of {q} ({version} signs), k={k}" + (f" ({', '.join(one)} at k=1)" if one else "")
        plots.correlation_heatmap(table, title, out / "figures" / f"corr_{stem}")
    atomic_write_json({"inputs": inputs, "signs": exp.signs, "one_per_seed": one, "bayestda": __version__}, manifest)
    if one:
        print(f"{', '.join(one)}: one τ per seed (over the whole run): correlated at k = 1 with the others at k = {k}")
    write_results_page(out)
    return out


def check_step3_matches(exp: Experiment, k: int) -> None:
    """Step 4 reads the same methods, seeds and score files as step 3's results beside it, at a k step 3 made."""
    step3 = read_manifest(exp.results_dir / PVALUES_MANIFEST)
    rerun = stats_command("compute_pvalues.py", exp.name, exp.methods, exp.seeds)
    if step3 is None:
        raise UserError(f"{exp.results_dir} has no finished step-3 results; make them first with: {rerun}")
    got = step3["inputs"]
    if got["methods"] != exp.methods or got["seeds"] != exp.seeds or got.get("score_digest") != exp.input_digest():
        what = ("methods " + ",".join(got["methods"]) if got["methods"] != exp.methods
                else "seeds " + ",".join(map(str, got["seeds"])) if got["seeds"] != exp.seeds
                else "score files that have changed since")  # fmt: skip
        raise UserError(f"the step-3 results in {exp.results_dir} are of {what}, not of the score files this step "
                        f"reads; bring them up to date with: {rerun}")  # fmt: skip
    if k not in got.get("num_ckpts", []):
        raise UserError(f"--num_ckpts {k}: step 3 made {exp.name} for k = {got.get('num_ckpts')}; use one of those, "
                        f"or rerun step 3 with a larger --max_ckpts")  # fmt: skip
