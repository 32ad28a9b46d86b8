"""The task graph of one experiment: subsets → train (per seed) → each method (per seed) → p-values, correlations;
and, with `lds` among the methods, each seed's LDS retrains (`subset_retrains`), which steps 3–4 do not read.

Every task is one call of a step script, exactly as a user would type it, so the runner never does anything the
steps cannot do by hand. A task is done when the artifacts its step would write already exist (the same test
the step uses to skip finished work), so a rerun only lists what is missing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts.checkpoints import finished_checkpoints
from ..artifacts.manifest import CORRELATIONS_MANIFEST, PVALUES_MANIFEST
from ..core import plugins
from ..core.paths import (
    REPO_ROOT,
    experiment_name,
    find_subset_file,
    read_seeds,
    results_dir,
    score_file,
    seed_model_dir,
    subset_retrain_file,
)
from ..data.subsets import paper_subset_file, paper_subsets_dir
from ..data.tasks import get_task, task_argv
from ..methods import registry
from ..models import families
from ..runs.subset_retrains import SCRIPT as LDS_SCRIPT
from ..runs.subset_retrains import SubsetRetrainOptions, holds_retrains
from ..training.recipe import RecipeOptions

# The paper's five as runner names: a method with variants is named bare and takes its variant from its flag
# (`--protocol`, `--solver`), whose default is the paper's.
DEFAULT_METHODS = tuple(name.split("-", 1)[0] for name in registry.PAPER_METHODS)
LDS = "lds"  # in --methods: each seed's LDS retrains (retrain_subsets.py), not a method
ALL_METHODS = "all"  # in --methods: every registered method, each variant


@dataclass(frozen=True)
class ExperimentSpec:
    """What to run: one model family on one training subset, a set of methods and seeds."""

    model: str  # a model name of a family (`families`), e.g. cnn, cnn3, vit, logreg, or cnn-deinit
    task: str
    num_per_class: int | str  # training images per class, or "all"
    methods: tuple[str, ...]  # score-file names, e.g. ("loo-paper", "ats", "if-paper", "gd", "gc")
    seed_ids: tuple[int, ...]
    out_root: Path
    data_root: Path | None = None  # None: the steps' own default ($BAYESTDA_DATA_ROOT, else ./data)
    recipe: RecipeOptions = field(default_factory=RecipeOptions)  # the recipe flags passed to step 1
    overwrite: bool = False
    train_flags: tuple[str, ...] = ()  # extra flags of the training step, e.g. the ViT's --model_name_or_path
    lds: SubsetRetrainOptions | None = None  # the LDS retrains' options; None: no LDS retrains
    plugins: tuple[str, ...] = ()  # plug-ins every task loads (`core.plugins`: absolute paths or module names)

    @property
    def name(self) -> str:
        return experiment_name(self.model, self.task, self.num_per_class)

    @property
    def seeds(self) -> list[int]:
        """Seed values of the selected seed_ids (lines of seeds.txt)."""
        values = read_seeds()
        return [values[i] for i in self.seed_ids]


@dataclass
class Task:
    """One step-script call. `argv` is the script (relative to the repository root) and its flags."""

    name: str  # unique within the experiment; also the stem of its log file
    stage: str  # subsets, train, a method name, pvalues or correlations
    argv: list[str]
    deps: list[str] = field(default_factory=list)
    done: bool = False
    seed_id: int | None = None  # per-seed tasks get `--seed_id` appended
    uses_gpu: bool = False
    takes_workers: bool = False  # LOO: gets `--workers <threads>` so it fills its share of the CPU

    def command(self, threads: int = 1, seed_id: str | None = None) -> list[str]:
        """The script and flags; `seed_id` replaces the task's own (a Slurm array index variable)."""
        argv = list(self.argv)
        if self.seed_id is not None:
            argv += ["--seed_id", seed_id if seed_id is not None else str(self.seed_id)]
        if self.takes_workers:
            argv += ["--workers", str(threads)]
        return argv


def resolve_methods(names: list[str], variants: dict[str, str] | None = None) -> tuple[str, ...]:
    """Score-file names: a bare method with variants takes `variants[<its variant option>]` (e.g. {"protocol":
    "scratch"}), else its default; full names pass through; `all` is every score-file name of the registry. Unknown
    names are an error."""
    variants = variants or {}
    out = []
    for name in [n for given in names for n in (registry.score_names() if given == ALL_METHODS else [given])]:
        method = registry.get(name)
        if name == method.name and method.variant:
            name = f"{name}-{variants.get(method.variant, method.default_variant)}"
            registry.get(name)  # a variant that does not exist is an error too
        if name not in out:
            out.append(name)
    return tuple(out)


def _recorded_inputs(manifest: Path) -> dict:
    return json.loads(manifest.read_text()).get("inputs", {}) if manifest.is_file() else {}


def _analysis_done(manifest: Path, spec: ExperimentSpec, methods: list[str], inputs: list[Path]) -> bool:
    """The step's manifest names these methods and seeds and is newer than every score file it read."""
    if not manifest.is_file() or not all(p.is_file() for p in inputs):
        return False
    recorded = _recorded_inputs(manifest)
    newest_input = max(p.stat().st_mtime for p in inputs)
    return (
        recorded.get("methods") == methods
        and recorded.get("seeds") == spec.seeds
        and manifest.stat().st_mtime >= newest_input
    )


def kept_methods(spec: ExperimentSpec) -> list[str]:
    """Methods that the experiment's step-3 results already hold on these seeds, beyond `spec.methods`, with every
    score file still there. Steps 3–4 refuse to drop a method from their results, so a runner that adds methods
    to a finished experiment passes these too (in the order recorded), instead of failing there. None with
    --overwrite, which replaces the results."""
    if spec.overwrite:
        return []
    recorded = _recorded_inputs(
        results_dir(spec.out_root, spec.model, spec.task, spec.num_per_class) / PVALUES_MANIFEST
    )
    if recorded.get("seeds") != spec.seeds:
        return []
    complete = registry.methods_with_scores(spec.out_root, spec.model, spec.task, spec.num_per_class, spec.seeds)
    return [m for m in recorded.get("methods", []) if m not in spec.methods and m in complete]


def build_graph(spec: ExperimentSpec) -> list[Task]:
    """Every task of the experiment in dependency order, each marked done or not."""
    family = families.of_model(spec.model)
    out = spec.out_root
    common = ["--out_root", str(out)] if out.resolve() != REPO_ROOT else []
    common += [part for spec_ in spec.plugins for part in (plugins.FLAG, spec_)]  # every script takes --plugin
    data = ["--data_root", str(spec.data_root)] if spec.data_root else []
    overwrite = ["--overwrite"] if spec.overwrite else []
    n = spec.num_per_class
    seeds = read_seeds()

    if get_task(spec.task).subsets == "paper":  # nothing to write: the original's files must be there already
        for split in ("train", "test"):
            paper_subset_file(spec.task, split, n)  # a one-line error now, not in a task, if a file is missing
        data += ["--paper_subsets_dir", str(paper_subsets_dir())]
        subsets_done = True
    else:
        names = (f"train_subset_{n}pc.txt", "test_subset.txt")
        subsets_done = all(find_subset_file(out, name, spec.task) for name in names)
    subsets = Task(
        "subsets", "subsets", ["make_subsets.py", *task_argv(spec.task), "--num_per_class", str(n), *common, *data],
        done=subsets_done,
    )  # fmt: skip
    tasks = [subsets]

    train_script = [*family.train_argv(spec.model, spec.task, n), *spec.recipe.argv(), *spec.train_flags, *common,
                    *data, *overwrite]  # fmt: skip
    for k in spec.seed_ids:
        seed_dir = seed_model_dir(out, spec.model, spec.task, n, seeds[k])
        done = not spec.overwrite and finished_checkpoints(seed_dir) is not None
        tasks.append(Task(f"train_seed{k}", "train", train_script, ["subsets"], done, k, uses_gpu=True))

    score_files = []
    for method in spec.methods:
        argv = [*registry.score_argv(spec.model, method, spec.task, n), *common, *data, *overwrite]
        for k in spec.seed_ids:
            path = score_file(out, spec.model, method, spec.task, n, seeds[k])
            score_files.append(path)
            done = not spec.overwrite and path.is_file()
            tasks.append(
                Task(f"{method}_seed{k}", method, argv, [f"train_seed{k}"], done, k, uses_gpu=True,
                     takes_workers=hasattr(registry.get(method).options, "workers"))
            )  # fmt: skip

    if spec.lds is not None:
        flags = [
            x
            for f in dataclasses.fields(spec.lds)
            if f.name.startswith("lds_") and getattr(spec.lds, f.name) != f.default
            for x in (f"--{f.name}", str(getattr(spec.lds, f.name)))
        ]
        argv = [LDS_SCRIPT, "--model", spec.model, *task_argv(spec.task), "--num_per_class", str(n), *flags,
                *common, *data, *overwrite]  # fmt: skip
        for k in spec.seed_ids:
            path = subset_retrain_file(out, spec.model, spec.task, n, seeds[k])
            done = not spec.overwrite and holds_retrains(path, spec.lds)
            tasks.append(Task(f"{LDS}_seed{k}", LDS, argv, [f"train_seed{k}"], done, k, uses_gpu=True,
                              takes_workers=True))  # fmt: skip
    if not spec.methods:  # LDS retrains only: nothing for steps 3–4
        return tasks

    method_tasks = [t.name for t in tasks if t.stage in spec.methods]
    kept = kept_methods(spec)
    analysed = [*kept, *spec.methods]
    score_files += [score_file(out, spec.model, m, spec.task, n, s) for m in kept for s in spec.seeds]
    stats = ["--model", spec.model, *task_argv(spec.task), "--num_per_class", str(n),
             "--methods", ",".join(analysed)]  # fmt: skip
    if list(spec.seed_ids) != list(range(len(seeds))):
        stats += ["--seed_ids", *map(str, spec.seed_ids)]
    res = results_dir(out, spec.model, spec.task, n)
    for stage, script, manifest, deps in (
        ("pvalues", "compute_pvalues.py", PVALUES_MANIFEST, method_tasks),
        (
            "correlations",
            "compute_correlations.py",
            CORRELATIONS_MANIFEST,
            [*method_tasks, "pvalues"],
        ),  # step 4 reads step 3's
    ):
        done = not spec.overwrite and _analysis_done(res / manifest, spec, analysed, score_files)
        tasks.append(Task(stage, stage, [script, *stats, *common, *overwrite], deps, done))
    return tasks


ANALYSIS_STAGES = ("pvalues", "correlations")


def pending(tasks: list[Task]) -> list[Task]:
    """The tasks still to run. p-values and correlations also rerun when a score file they read is still to come;
    a score file that exists is kept, as its step would keep it."""
    todo: set[str] = set()
    for task in tasks:  # dependency order
        inputs_change = task.stage in ANALYSIS_STAGES and any(d in todo for d in task.deps)
        if not task.done or inputs_change:
            todo.add(task.name)
    return [t for t in tasks if t.name in todo]
