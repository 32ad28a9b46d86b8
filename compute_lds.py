#!/usr/bin/env python
"""Step 6, the linear datamodeling score with its noise: for every method, the LDS per seed, the LDS of the mean over
seeds, the noise ceiling of each (what another seed's retrains predict), and each LDS as a share of its ceiling, with
bootstrap intervals over test points. Needs step 2b's retrains (retrain_subsets.py, or run_experiment.py --methods
...,lds) and the methods' score files. What each quantity means: bayestda/lds.py.

Writes results/<experiment>/lds/: per_test_point.csv, lds.csv, ceilings.csv, summary.json and figures/.

Examples:
  python compute_lds.py --experiment cnn_mnist3_50pc
  python compute_lds.py --experiment cnn_mnist3_10pc --methods loo-scratch,if-ggn,gd,trak --bootstrap 2000
"""

from bayestda.analysis.cli import experiment_from_args, parser, print_step_results
from bayestda.analysis.lds import console_summary, write_lds
from bayestda.analysis.results import check_num_ckpts
from bayestda.analysis.statistics import parse_experiment_name
from bayestda.core.cli import at_least, run
from bayestda.core.errors import UserError
from bayestda.core.paths import read_seeds, resolve_out_root
from bayestda.methods.registry import methods_with_scores
from bayestda.runs.subset_retrains import load_subset_retrains


def main():
    p = parser(__doc__)
    p.set_defaults(methods=None)
    p.add_argument("--num_ckpts", type=at_least(1), default=5,
                   help="last checkpoints averaged per seed (k), in the scores and in the retrained losses alike")  # fmt: skip
    p.add_argument("--bootstrap", type=at_least(0), default=1000,
                   help="bootstrap resamples of the test points for the intervals (0: none)")  # fmt: skip
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    args = p.parse_args()
    if not 0 < args.level < 1:
        p.error(f"--level must be between 0 and 1, got {args.level}")
    if args.methods is None:  # every method with score files for the seeds
        if args.experiment:
            model, task, n = parse_experiment_name(args.experiment)
        else:
            model, task, n = args.model, args.task, args.num_per_class
        seeds = [read_seeds()[k] for k in args.seed_ids]
        found = methods_with_scores(resolve_out_root(args.out_root), model, task, n, seeds) if model else []
        if model and not found:
            raise UserError(f"no method has score files for every seed of {model}_{task}_{n}pc; make some with "
                            f"python run_experiment.py --model {model} --task {task} --num_per_class {n}, or name "
                            "them with --methods")  # fmt: skip
        args.methods = ",".join(found)
    exp = experiment_from_args(p, args)
    k = check_num_ckpts("--num_ckpts", args.num_ckpts, exp)
    retrains = load_subset_retrains(exp)
    out = write_lds(exp, retrains, k, args.bootstrap, args.level, args.overwrite)
    print_step_results(out, exp.results_dir / "lds", exp.name, "LDS", console_summary)


if __name__ == "__main__":
    run(main)
