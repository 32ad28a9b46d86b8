#!/usr/bin/env python
"""Step 2c, self-influence for mislabel detection: each method's τ(z_j, z_j), with every training point as its own
test point, on every posterior sample of a seed (the method's step-2 scorer, default options). Meant for a model
trained with --label_noise (e.g. cnn-noisy10); step 7 (compute_mislabel.py) reads these files. What the signs and
rankings mean: bayestda/mislabel.py.

Writes self_influence/<model>/<method>/<task>_<n>pc/<seed>.pt; finished files are skipped.

Examples:
  python train_cnn.py --task mnist3 --num_per_class 50 --label_noise 0.1
  python self_influence.py --model cnn-noisy10 --task mnist3 --num_per_class 50
  python self_influence.py --model cnn-noisy10 --task mnist3 --num_per_class 50 --methods gd,trak --seed_id 3
"""

from bayestda.analysis.mislabel import METHODS, run_self_influence
from bayestda.core.cli import Parser, resolve_device, run
from bayestda.core.paths import resolve_data_root, resolve_out_root, select_seeds
from bayestda.data.flags import add_common_args
from bayestda.methods import registry


def main():
    p = Parser(__doc__)
    add_common_args(p)
    p.add_argument(
        "--model", default="cnn-noisy10", help="trained model, e.g. cnn-noisy10 (train_cnn.py --label_noise 0.1)"
    )
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated score-file names, each with its default options ({', '.join(registry.score_names())})")  # fmt: skip
    args = p.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        registry.get(m)  # an unknown name is one line
    done = run_self_influence(methods, args.model, args.task, args.num_per_class, select_seeds(args.seed_id),
                              resolve_out_root(args.out_root), resolve_data_root(args.data_root),
                              resolve_device(args.device), args.overwrite)  # fmt: skip
    for (method, seed), path in done.items():
        print(f"self-influence {method} {args.model} {args.task} {args.num_per_class}pc seed {seed}: "
              + (f"written {path}" if path else "already computed, skipped (--overwrite to redo)"))  # fmt: skip


if __name__ == "__main__":
    run(main)
