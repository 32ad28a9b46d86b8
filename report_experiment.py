#!/usr/bin/env python
"""Print the REPRODUCTION.md tables of a finished experiment (steps 1-4 done), read from its artifacts.

Accuracy and training time from metrics.json, compute time from the score files, claims (a), (b), (c) and (e)
from results/<experiment>/. Example: python report_experiment.py --experiment cnn_mnist3_10pc
"""

import pandas as pd

from bayestda.cli import Parser, run
from bayestda.paths import resolve_out_root, results_dir
from bayestda.report import experiment_report
from bayestda.scores import METHODS


def main():
    p = Parser(__doc__)
    p.add_argument("--experiment", required=True, help="<model>_<task>_<n>pc, e.g. cnn_mnist3_10pc")
    p.add_argument("--methods", default=",".join(METHODS), help="methods to report (those with score files)")
    p.add_argument("--num_ckpts", type=int, default=5, help="checkpoints per seed for (a) and (b)")
    p.add_argument("--out_root", default=None, help="root of models/, tda_scores/, results/; default: the repository")
    args = p.parse_args()
    model, task, n = args.experiment.rsplit("_", 2)
    if not n.endswith("pc") or not n[:-2].isdigit():
        p.error(f"--experiment {args.experiment!r}: expected <model>_<task>_<n>pc")
    out_root = resolve_out_root(args.out_root)
    methods = [m for m in args.methods.split(",") if m]
    res = results_dir(out_root, model, task, int(n[:-2]))
    if not (res / "summary.csv").is_file():
        p.error(f"{res} has no summary.csv; run compute_pvalues.py and compute_correlations.py first")
    have = set(pd.read_csv(res / "summary.csv").method)
    print(experiment_report(out_root, model, task, int(n[:-2]), [m for m in methods if m in have], args.num_ckpts))


if __name__ == "__main__":
    run(main)
