#!/usr/bin/env python
"""Step 1a: train the CNN (or logreg) ensemble, one model per seed; its last 5 epoch checkpoints are posterior samples.

Writes models/<model>/<task>_<n>pc/<seed>/ckpt_epoch_<e>.pt and metrics.json; finished seeds are skipped.
"""

from bayestda import families
from bayestda.cli import Parser, add_common_args, run
from bayestda.ensemble import EnsembleSpec, add_training_args, train_main


def main():
    p = Parser(__doc__)
    add_common_args(p)
    p.add_argument(
        "--arch",
        default="cnn2",
        choices=families.archs("train_cnn.py"),
        help=families.arch_help("train_cnn.py"),
    )
    add_training_args(p)
    args = p.parse_args()
    spec = EnsembleSpec(args.task, args.num_per_class, args.arch, args.posterior, args.epochs,
                        label_noise=args.label_noise)  # fmt: skip
    train_main(p, args, spec)


if __name__ == "__main__":
    run(main)
