"""Flags shared by the steps that read an experiment's score files (3–6): which experiment, methods and seeds."""

from __future__ import annotations

from ..core.cli import Parser, add_seed_ids
from ..core.paths import read_seeds, resolve_out_root
from ..data.flags import add_num_per_class, add_task
from ..data.tasks import SUBSETS
from ..methods.registry import PAPER_METHODS
from ..models import families
from .statistics import Experiment, load_experiment, parse_experiment_name


def parser(description: str) -> Parser:
    p = Parser(description)
    p.add_argument(
        "--experiment",
        default=None,
        help="<model>_<task>_<n>pc, e.g. cnn_mnist3_50pc or cnn_mnist3-paper_10pc (instead of the next four)",
    )
    p.add_argument("--model", default=None, help=f"{', '.join(families.model_names())}, or with a posterior suffix: "
                   "cnn-deinit, cnn-debatch, ...")  # fmt: skip
    add_task(p, required=False, with_dir=False)  # the score files carry the images' indices
    add_num_per_class(p, required=False)
    p.add_argument("--methods", default=",".join(PAPER_METHODS), help="comma-separated methods (score-file names)")
    add_seed_ids(p)
    p.add_argument(
        "--allow_partial", action="store_true", help="use only the seeds that have every method (with a warning)"
    )
    p.add_argument("--out_root", default=None, help="root of tda_scores/ and results/; default: the repository")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the results match the current scores")
    return p


def experiment_from_args(p: Parser, args) -> Experiment:
    if args.experiment:
        if args.model or args.task or args.num_per_class or args.subsets != SUBSETS[0]:
            p.error("give either --experiment or --model/--task/--subsets/--num_per_class, not both")
        model, task, n = parse_experiment_name(args.experiment)
    elif args.model and args.task and args.num_per_class:
        model, task, n = args.model, args.task, args.num_per_class
    else:
        p.error("name the experiment: --experiment cnn_mnist3_50pc, or --model, --task and --num_per_class")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if len(set(methods)) != len(methods) or not methods:
        p.error(f"--methods must list distinct methods, got {args.methods!r}")
    seeds = [read_seeds()[k] for k in args.seed_ids]
    return load_experiment(model, task, n, resolve_out_root(args.out_root), methods, seeds, args.allow_partial)


def print_step_results(out, folder, name: str, what: str, summary) -> None:
    """The end of an optional step: `summary(folder)` of its results (`out`, or None when they were up to date and
    the step wrote nothing), saying so in the second case."""
    if out is None:
        print(f"{name}: {what} results up to date, skipped (--overwrite to redo)")
    print(summary(folder))
