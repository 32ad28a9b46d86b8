#!/usr/bin/env python
"""Print the REPRODUCTION.md tables of a finished experiment (steps 1-4 done), read from its artifacts.

Accuracy and training time from metrics.json; from the score files, compute time and the share of var(τ) that is
common to every training image (near 1: τ does not measure z_j, as with the paper's LOO); claims (a), (b), (c) and
(e) from results/<experiment>/; the dataset's labels (from --data_root) say which pairs are stable in (b). With
--compare, the noise of several experiments side by side, per method: claim (d) (a bigger model) and the split
of the noise between initialisation and batch order.

Examples:
  python report_experiment.py --experiment cnn_mnist3_10pc
  python report_experiment.py --experiment cnn_mnist3_50pc --distance if-ekfac:if-ggn
  python report_experiment.py --compare cnn_mnist3_50pc cnn3_mnist3_50pc
  python report_experiment.py --compare cnn_mnist3_50pc cnn-deinit_mnist3_50pc cnn-debatch_mnist3_50pc
"""

from bayestda.analysis.report import compare_experiments, experiment_report
from bayestda.analysis.statistics import parse_experiment_name
from bayestda.core.cli import Parser, at_least, run
from bayestda.core.paths import DATA_ROOT_ENV, resolve_data_root, resolve_out_root
from bayestda.data.flags import add_paper_subsets_dir
from bayestda.data.subsets import load_split
from bayestda.methods.registry import score_names


def main():
    p = Parser(__doc__)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="<model>_<task>_<n>pc, e.g. cnn_mnist3_10pc or cnn_mnist3-paper_10pc")
    which.add_argument("--compare", nargs="+", metavar="EXPERIMENT", help="experiments to set side by side")
    p.add_argument("--methods", default=",".join(score_names()), help="methods to report (those with score files)")
    p.add_argument("--num_ckpts", type=at_least(1), default=5, help="checkpoints per seed for (a), (b) and --compare")
    p.add_argument("--out_root", default=None, help="root of models/, tda_scores/, results/; default: the repository")
    p.add_argument("--data_root", default=None,
                   help=f"folder holding MNIST/raw and cifar-10-batches-py (for the labels in (b)); default ${DATA_ROOT_ENV}, else ./data")  # fmt: skip
    p.add_argument("--distance", nargs="+", default=[], metavar="METHOD:REFERENCE",
                   help="also how far METHOD's scores are from REFERENCE's on each posterior sample: Spearman and "
                   "relative error, e.g. if-ekfac:if-ggn (EK-FAC against the exact GGN inverse)")  # fmt: skip
    add_paper_subsets_dir(p)
    args = p.parse_args()
    distances = []
    for pair in args.distance:
        method, _, reference = pair.partition(":")
        if not method or not reference:
            p.error(f"--distance {pair}: give METHOD:REFERENCE, e.g. if-ekfac:if-ggn")
        distances.append((method, reference))
    methods = [m for m in args.methods.split(",") if m]
    out_root = resolve_out_root(args.out_root)
    if args.compare:
        print(compare_experiments(out_root, args.compare, methods, args.num_ckpts))
        return
    model, task, n = parse_experiment_name(args.experiment)
    data_root = resolve_data_root(args.data_root)
    labels = load_split(task, True, data_root)[1], load_split(task, False, data_root)[1]
    print(experiment_report(out_root, model, task, n, methods, args.num_ckpts, labels, data_root, distances))


if __name__ == "__main__":
    run(main)
