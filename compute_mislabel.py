#!/usr/bin/env python
"""Step 7, mislabel detection: the AUC of finding the flipped labels of a --label_noise run by each method's
self-influence, ranked by its mean over the posterior samples, by one sample (the first seed's last checkpoint) and
by its z-score μ/σ. Needs step 2c (self_influence.py). What each ranking means: bayestda/mislabel.py.

Writes results/<experiment>/mislabel/: auc.csv, self_influence.csv, summary.json and figures/roc.

Examples:
  python compute_mislabel.py --experiment cnn-noisy10_mnist3_50pc
  python compute_mislabel.py --experiment cnn-noisy10_mnist3_50pc --methods gd,loo-scratch --seed_ids 0 1 2
"""

from bayestda.analysis.cli import print_step_results
from bayestda.analysis.mislabel import METHODS, console_summary, write_mislabel
from bayestda.analysis.statistics import parse_experiment_name
from bayestda.core.cli import Parser, add_seed_ids, run
from bayestda.core.paths import read_seeds, resolve_out_root, results_dir


def main():
    p = Parser(__doc__)
    p.add_argument(
        "--experiment", required=True, help="<model>_<task>_<n>pc of a noisy run, e.g. cnn-noisy10_mnist3_50pc"
    )
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated score-file names with self-influence files"
    )
    add_seed_ids(p)
    p.add_argument("--out_root", default=None, help="root of self_influence/ and results/; default: the repository")
    p.add_argument("--overwrite", action="store_true", help="recompute even if the results match the current files")
    args = p.parse_args()
    model, task, n = parse_experiment_name(args.experiment)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if len(set(methods)) != len(methods) or not methods:
        p.error(f"--methods must list distinct methods, got {args.methods!r}")
    seeds = [read_seeds()[k] for k in args.seed_ids]
    if len(seeds) < 2:
        p.error("the z-score and the mean over the posterior need at least 2 seeds")
    out = write_mislabel(model, task, n, methods, seeds, resolve_out_root(args.out_root), args.overwrite)
    folder = results_dir(resolve_out_root(args.out_root), model, task, n) / "mislabel"
    print_step_results(out, folder, args.experiment, "mislabel", console_summary)


if __name__ == "__main__":
    run(main)
