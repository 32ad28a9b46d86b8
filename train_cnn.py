#!/usr/bin/env python
"""Step 1a: train an ensemble of a model family (--arch: the paper's CNNs, logreg, or a plug-in's), one model per seed;
its last 5 epoch checkpoints are posterior samples.

The recipe (optimizer, lr, weight decay, batch size, epochs, dropout) is the model family's, else the task's, else
the paper's (Adam, lr 1e-3, weight decay 5e-3, batch 32); each flag below overrides one field.

Writes models/<model>/<task>_<n>pc/<seed>/ckpt_epoch_<e>.pt and metrics.json; finished seeds are skipped.
"""

from bayestda.core.cli import Parser, run
from bayestda.data.flags import add_common_args
from bayestda.models import families
from bayestda.runs.ensemble import EnsembleSpec, add_training_args, recipe_flags, train_main


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
    spec = EnsembleSpec(args.task, args.num_per_class, args.arch, args.posterior, recipe_flags(p, args),
                        label_noise=args.label_noise)  # fmt: skip
    train_main(p, args, spec)


if __name__ == "__main__":
    run(main)
