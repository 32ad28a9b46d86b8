#!/usr/bin/env python
"""Step 4: Pearson and Spearman correlations between methods of per-pair μ, σ, p and z = μ/σ.

Writes results/<model>_<task>_<n>pc/correlations/<pearson|spearman>_<quantity>_<raw|aligned>.csv and
heatmaps under figures/. `aligned` flips each method's sign so that "z_j helps z" is positive.
"""

from bayestda.analysis.cli import experiment_from_args, parser
from bayestda.analysis.results import write_correlations
from bayestda.core.cli import at_least, run


def main():
    p = parser(__doc__)
    p.add_argument("--num_ckpts", type=at_least(1), default=None,
                   help="last checkpoints averaged per seed (1..those in the score files; the paper uses 5); "
                   "default: all of them")  # fmt: skip
    args = p.parse_args()
    exp = experiment_from_args(p, args)
    out = write_correlations(exp, args.num_ckpts, args.overwrite)
    print(
        f"{exp.name}: "
        + (f"correlations written to {out}" if out else "correlations up to date, skipped (--overwrite to redo)")
    )


if __name__ == "__main__":
    run(main)
