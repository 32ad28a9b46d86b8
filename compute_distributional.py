#!/usr/bin/env python
"""Step 5, distributional TDA: how removing z_j changes the distribution of a test loss over the seeds (Δmean,
Δstd, W1, W2, KS), measured by loo-scratch's retrains, and how well each method predicts it; the fixed-seed
view against the across-seed view. Needs steps 1–2 for loo-scratch and the methods (the checkpoints give each
seed's base losses). What each quantity means: bayestda/distributional.py.

Writes results/<experiment>/distributional/: ground_truth.csv, scores.csv, fixed_seed_by_epoch.csv,
fixed_vs_across.csv, summary.json and figures/.

Examples:
  python compute_distributional.py --experiment cnn_mnist3_10pc --methods loo-scratch,ud,if-ggn,ats,if-paper
  python compute_distributional.py --experiment cnn_mnist3_10pc --methods loo-scratch,ud,gd,trak --measures dmean
"""

from bayestda.analysis.cli import experiment_from_args, parser, print_step_results
from bayestda.analysis.distributional import (
    MEASURES,
    base_losses,
    check_measures,
    check_truth,
    console_summary,
    removal_factor,
    truth_method,
    write_distributional,
)
from bayestda.analysis.results import check_num_ckpts
from bayestda.core.cli import at_least, run
from bayestda.core.paths import DATA_ROOT_ENV, resolve_data_root


def main():
    p = parser(__doc__)
    p.set_defaults(methods="loo-scratch,ud,if-ggn,if-paper,ats")
    p.add_argument("--measures", default=None,
                   help=f"comma-separated, of {', '.join(MEASURES)}. Methods that are not in loss units (gd, gc, trak, "
                   "tracin) have dmean only, the ranking of their μ: asked for another measure, they are refused. "
                   "Default: every measure each method has")  # fmt: skip
    p.add_argument("--num_ckpts", type=at_least(1), default=5, help="last checkpoints averaged per seed (k)")
    p.add_argument("--data_root", default=None,
                   help=f"folder holding MNIST/raw and cifar-10-batches-py; default ${DATA_ROOT_ENV}, else ./data")  # fmt: skip
    args = p.parse_args()
    asked = [m for m in (args.measures or ",".join(MEASURES)).split(",") if m]
    if unknown := [m for m in asked if m not in MEASURES]:
        p.error(f"--measures: unknown {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    exp = experiment_from_args(p, args)
    check_truth(exp)
    predicted = [m for m in exp.methods if m != truth_method()]
    if args.measures is not None:
        check_measures(exp, predicted, asked)
    elif similarities := [m for m in predicted if removal_factor(m, len(exp.train_idx)) is None]:
        print(f"{', '.join(similarities)}: not in loss units, so scored on the ranking of Δmean only")
    k = check_num_ckpts("--num_ckpts", args.num_ckpts, exp)
    base = base_losses(exp, resolve_data_root(args.data_root), k)
    out = write_distributional(exp, base, k, asked, args.overwrite)
    print_step_results(out, exp.results_dir / "distributional", exp.name, "distributional", console_summary)


if __name__ == "__main__":
    run(main)
