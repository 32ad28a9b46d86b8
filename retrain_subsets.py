#!/usr/bin/env python
"""Step 2b, the LDS ground truth: retrain each seed on M random subsets of the training data (the same subsets for
every seed) and record the test losses at the checkpoint epochs. How a retrain follows the seed's initialisation and
batch order: bayestda/subset_retrains.py. Step 6 (compute_lds.py) reads these files.

Writes retrains/<model>/lds/<task>_<n>pc/<seed>.pt; finished seeds are skipped.

Examples:
  python retrain_subsets.py --task mnist3 --num_per_class 50
  python retrain_subsets.py --task mnist3 --num_per_class 50 --seed_id 3 --lds_subsets 100
"""

from bayestda.core.cli import Parser, resolve_device, run
from bayestda.core.options import add_arguments, from_args
from bayestda.core.paths import resolve_data_root, resolve_out_root, select_seeds
from bayestda.data.flags import add_common_args
from bayestda.models import families
from bayestda.runs.subset_retrains import SubsetRetrainOptions, run_subset_retrains


def main():
    p = Parser(__doc__)
    add_common_args(p)
    p.add_argument("--model", default="cnn", help=f"trained model to retrain: {', '.join(families.model_names())}, "
                   "or with a posterior suffix (-deinit, -debatch)")  # fmt: skip
    add_arguments(p, SubsetRetrainOptions)
    args = p.parse_args()
    device = resolve_device(args.device)
    opts = from_args(SubsetRetrainOptions, args).resolve(families.of_model(args.model), device.type == "cuda")
    done = run_subset_retrains(args.model, args.task, args.num_per_class, select_seeds(args.seed_id),
                               resolve_out_root(args.out_root), resolve_data_root(args.data_root), device, opts,
                               args.overwrite)  # fmt: skip
    for seed, path in done.items():
        print(f"LDS retrains {args.model} {args.task} {args.num_per_class}pc seed {seed}: "
              + (f"written {path}" if path else "already computed, skipped (--overwrite to redo)"))  # fmt: skip


if __name__ == "__main__":
    run(main)
