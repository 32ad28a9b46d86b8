#!/usr/bin/env python
"""Step 3: per-pair mean, std and p-values of τ across posterior samples, for k = 1..5 checkpoints.

Writes results/<model>_<task>_<n>pc/: mu/, sigma/, pvalues/ (per method and k: train indices as rows,
test indices as columns; p-values `paper` = 2Φ(-|μ/σ|) and `t` = one-sample t-test, with BH-FDR),
mean_p_values.csv, mean_p_values_t.csv, summary.csv and figures/.
"""

from bayestda.analysis.cli import experiment_from_args, parser
from bayestda.analysis.report import console_summary
from bayestda.analysis.results import write_pvalues
from bayestda.core.cli import at_least, run


def main():
    p = parser(__doc__)
    p.add_argument("--max_ckpts", type=at_least(1), default=None,
                   help="largest number of last checkpoints averaged per seed (1..those in the score files, the paper's "
                   "5); default: all of them")  # fmt: skip
    args = p.parse_args()
    exp = experiment_from_args(p, args)
    out = write_pvalues(exp, args.max_ckpts, args.overwrite)
    print(
        f"{exp.name}: " + (f"results written to {out}" if out else "results up to date, skipped (--overwrite to redo)")
    )
    print(console_summary(exp.results_dir))


if __name__ == "__main__":
    run(main)
