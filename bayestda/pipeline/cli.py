"""`run_experiment.py`: build an experiment's task graph and run what is missing on a backend."""

from __future__ import annotations

import dataclasses
import shlex
import sys

from ..analysis.report import console_summary
from ..artifacts.manifest import PVALUES_MANIFEST
from ..core import plugins
from ..core.cli import Parser, add_seed_ids, at_least, available_cores
from ..core.errors import UserError
from ..core.options import add_arguments, from_args
from ..core.paths import REPO_ROOT, resolve_out_root, results_dir
from ..data.flags import add_data_root, add_num_per_class, add_task
from ..methods import registry
from ..models import families
from ..runs.ensemble import recipe_of
from ..runs.subset_retrains import SCRIPT as LDS_SCRIPT
from ..runs.subset_retrains import SubsetRetrainOptions
from ..training.recipe import RecipeOptions
from . import slurm
from .execute import LocalExecutor, RayExecutor, execute, write_report
from .graph import (
    ALL_METHODS,
    DEFAULT_METHODS,
    LDS,
    ExperimentSpec,
    build_graph,
    kept_methods,
    pending,
    resolve_methods,
)


def parser(doc: str) -> Parser:
    p = Parser(doc)
    g = p.add_argument_group("experiment")
    g.add_argument(
        "--model",
        default="cnn",
        help=f"{', '.join(families.model_names())}, or with a posterior suffix: cnn-deinit, cnn-debatch, ...",
    )
    add_task(p, g)
    add_num_per_class(p, g)
    with_variants = [m for m in registry.all_methods().values() if m.variant]
    g.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated score-file names ({', '.join(registry.score_names())}), or {ALL_METHODS} for every one; a bare "
        + ", ".join(f"{m.name} takes its variant from --{m.variant}" for m in with_variants)
        + f"; and {LDS}: each seed's LDS retrains ({LDS_SCRIPT}, for compute_lds.py)",
    )
    for m in with_variants:
        g.add_argument(f"--{m.variant}", default=m.default_variant, choices=m.variants,
                       help=f"{m.label} variant for a bare `{m.name}` in --methods")  # fmt: skip
    for f in dataclasses.fields(SubsetRetrainOptions):
        if f.name.startswith("lds_"):
            g.add_argument(f"--{f.name}", type=type(f.default), default=None,
                           help=f"with {LDS} in --methods: {f.metadata['help']} (default {f.default})")  # fmt: skip
    add_seed_ids(p, g, "to run")
    g.add_argument(
        "--model_name_or_path",
        default=None,
        help="vit: the pretrained backbone (hub id or local folder); default in21k",
    )
    g.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"], help="vit: training autocast on GPU")
    add_data_root(g)
    add_arguments(p.add_argument_group("training recipe, passed to step 1 (training.recipe)"), RecipeOptions)
    g.add_argument(
        "--out_root", default=None, help="root of models/, tda_scores/, retrains/, results/, logs/; default: the repo"
    )
    g.add_argument("--overwrite", action="store_true", help="redo every task, even those whose outputs exist")

    r = p.add_argument_group("running")
    r.add_argument("--backend", default="local", choices=["local", "ray", "slurm"], help="where tasks run")
    r.add_argument(
        "--gpus", default="auto", help="local: GPU ids, one task per GPU (0,1,...); auto: every visible GPU; none: CPU"
    )
    r.add_argument(
        "--jobs",
        type=at_least(1),
        default=None,
        help="local, on CPU: tasks at once, sharing the cores; default min(cores, 8)",
    )
    r.add_argument(
        "--threads",
        type=at_least(1),
        default=None,
        help="local and ray: torch threads per task (OMP_NUM_THREADS); default: the cores shared out over the jobs "
        "(over the GPUs with GPUs, over --jobs with ray). Set it when other processes share the machine; the last "
        "bits of float sums depend on it. Slurm elements use --slurm_cpus",
    )
    r.add_argument(
        "--cold_start",
        action="store_true",
        help="local: start each task as a fresh `python script.py`; by default tasks are forked from a process "
        "that has imported torch once (saves the imports of every task)",
    )
    r.add_argument("--retries", type=at_least(0), default=1, help="times a failed task is retried before the run stops")
    r.add_argument("--keep_going", action="store_true", help="after a failure, go on with tasks that do not need it")
    r.add_argument(
        "--dry_run", action="store_true", help="list the tasks still to run (slurm: write sbatch scripts), run nothing"
    )
    r.add_argument("--ray_address", default=None, help="ray: cluster address; default $RAY_ADDRESS, else a local Ray")

    s = p.add_argument_group("slurm")
    s.add_argument("--slurm_partition", default=None, help="partition for every job")
    s.add_argument("--slurm_time", type=at_least(1), default=240, help="time limit of one array element, minutes")
    s.add_argument("--slurm_cpus", type=at_least(1), default=4, help="CPUs per array element")
    s.add_argument("--slurm_gpus", type=at_least(0), default=1, help="GPUs per training/TDA element; 0 for CPU-only")
    s.add_argument(
        "--slurm_extra", action="append", default=[], help="extra #SBATCH option, e.g. --slurm_extra=--account=abc"
    )
    return p


def _gpus(flag: str) -> list[str]:
    if flag in ("none", ""):
        return []
    if flag == "auto":
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    ids = [g.strip() for g in flag.split(",") if g.strip()]
    if not all(g.isdigit() for g in ids):
        raise UserError(f"--gpus {flag!r}: give GPU ids like 0,1 (or auto, or none)")
    import torch

    count = torch.cuda.device_count()
    if missing := [g for g in ids if int(g) >= count]:
        seen = f"GPUs 0..{count - 1}" if count else "no GPU"
        raise UserError(f"--gpus {flag}: torch sees {seen}, so GPU {', '.join(missing)} does not exist here; "
                        "use --gpus auto, or --gpus none to run on the CPU")  # fmt: skip
    return ids


def spec_from_args(p: Parser, args) -> ExperimentSpec:
    family = families.of_model(args.model)
    family_flags = {"--model_name_or_path": args.model_name_or_path, "--precision": args.precision}
    given = {flag: value for flag, value in family_flags.items() if value is not None}
    if bad := [flag for flag in given if flag not in family.train_flags]:
        owners = [f.name for f in families.all_families().values() if set(bad) <= set(f.train_flags)]
        p.error(f"{' and '.join(bad)} are for --model {' or '.join(owners)}, not {args.model}")
    train_flags = tuple(x for flag, value in given.items() for x in (flag, value))
    variants = {m.variant: getattr(args, m.variant) for m in registry.all_methods().values() if m.variant}
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = resolve_methods([m for m in names if m != LDS], variants)
    if not names:
        p.error("--methods is empty")
    lds = {f"--{k}": v for k, v in vars(args).items() if k.startswith("lds_") and v is not None}
    if lds and LDS not in names:
        p.error(f"{', '.join(lds)}: for the LDS retrains; add {LDS} to --methods")
    try:
        recipe = from_args(RecipeOptions, args)
        recipe_of(args.model, args.task, recipe)  # a recipe step 1 would refuse is refused before anything starts
    except UserError as exc:
        p.error(str(exc))
    return ExperimentSpec(
        model=args.model, task=args.task, num_per_class=args.num_per_class, methods=methods,
        seed_ids=tuple(args.seed_ids), out_root=resolve_out_root(args.out_root),
        data_root=args.data_root, recipe=recipe, overwrite=args.overwrite, train_flags=train_flags,
        plugins=tuple(plugins.loaded()),
        lds=SubsetRetrainOptions(**{k[2:]: v for k, v in lds.items()}) if LDS in names else None,
    )  # fmt: skip


def main(doc: str) -> None:
    p = parser(doc)
    args = p.parse_args()
    if args.threads and args.backend == "slurm":
        p.error("--threads is for the local and ray backends; a Slurm element's threads are its --slurm_cpus")
    spec = spec_from_args(p, args)
    tasks = build_graph(spec)
    todo = pending(tasks)
    log_dir = (spec.out_root / "logs" / spec.name).resolve()
    if spec.methods and (kept := kept_methods(spec)):
        print(f"{spec.name}: steps 3–4 also keep {','.join(kept)}, already in its results (--overwrite to drop them)")

    if args.dry_run:
        print(f"{spec.name}: {len(todo)} task(s) to run, {len(tasks) - len(todo)} already done")
        for task in todo:
            print(f"  {task.name:<22} python {shlex.join(task.command())}")
        if args.backend == "slurm" and todo:
            written = slurm.write_scripts(todo, spec.name, log_dir, log_dir / "slurm", _slurm_options(args))
            print(f"sbatch scripts: {written[0].parent}/ (submit with: bash {written[-1]})")
        return
    if not todo:
        print(f"{spec.name}: every task is already done (--overwrite to redo)")
        _print_results(spec)
        return
    if args.backend == "slurm":
        ids = slurm.submit(todo, spec.name, log_dir, _slurm_options(args))
        print(f"{spec.name}: submitted " + ", ".join(f"{s} as job {j}" for s, j in ids.items()))
        print(f"logs: {log_dir}/; check progress with squeue, and what is left with --dry_run")
        return

    cores = available_cores()
    if args.backend == "ray":
        executor = RayExecutor(args.ray_address, threads=args.threads or max(1, cores // (args.jobs or cores)))
    else:
        gpus = _gpus(args.gpus)
        executor = LocalExecutor(gpus, args.jobs or min(cores, 8), cores, cold=args.cold_start, threads=args.threads)
    print(f"{spec.name}: {len(todo)} task(s) to run, {len(tasks) - len(todo)} already done; {executor.describe()}")
    print(f"logs: {log_dir}/<task>.log")
    try:
        report = execute(tasks, executor, log_dir, spec.name, args.retries, args.keep_going)
    finally:
        executor.close()
    write_report(report, log_dir)
    print(report.summary())
    _print_results(spec)
    if not report.ok:
        sys.exit(1)


def _print_results(spec: ExperimentSpec) -> None:
    """The end of a run that reached step 3: what it found, and where the figures and the report page are."""
    results = results_dir(spec.out_root, spec.model, spec.task, spec.num_per_class)
    if (results / PVALUES_MANIFEST).is_file():
        print(console_summary(results))
    if spec.lds is not None:
        print(f"LDS retrains: {spec.out_root / 'retrains' / spec.model / LDS}/; score the methods on them with: "
              f"python compute_lds.py --experiment {spec.name}" + (f" --out_root {spec.out_root}" if spec.out_root
                                                                    .resolve() != REPO_ROOT else ""))  # fmt: skip


def _slurm_options(args) -> slurm.SlurmOptions:
    if any("=" not in e for e in args.slurm_extra):
        raise UserError("--slurm_extra takes sbatch options as --slurm_extra=--key=value")
    return slurm.SlurmOptions(
        partition=args.slurm_partition, time_min=args.slurm_time, cpus_per_task=args.slurm_cpus,
        gpus_per_task=args.slurm_gpus, extra=tuple(args.slurm_extra), retries=args.retries,
    )  # fmt: skip
