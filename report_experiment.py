#!/usr/bin/env python
"""Print the REPRODUCTION.md tables of a finished experiment (steps 1-4 done), read from its artifacts.

Accuracy and training time from metrics.json, compute time from the score files, claims (a), (b), (c) and (e)
from results/<experiment>/. Example: python report_experiment.py --experiment cnn_mnist3_10pc
"""

from bayestda.cli import Parser, run
from bayestda.paths import resolve_out_root
from bayestda.report import experiment_report
from bayestda.scores import METHODS
from bayestda.statistics import parse_experiment_name


def main():
    p = Parser(__doc__)
    p.add_argument("--experiment", required=True, help="<model>_<task>_<n>pc, e.g. cnn_mnist3_10pc")
    p.add_argument("--methods", default=",".join(METHODS), help="methods to report (those with score files)")
    p.add_argument("--num_ckpts", type=int, default=5, help="checkpoints per seed for (a) and (b)")
    p.add_argument("--out_root", default=None, help="root of models/, tda_scores/, results/; default: the repository")
    args = p.parse_args()
    model, task, n = parse_experiment_name(args.experiment)
    methods = [m for m in args.methods.split(",") if m]
    print(experiment_report(resolve_out_root(args.out_root), model, task, n, methods, args.num_ckpts))


if __name__ == "__main__":
    run(main)
