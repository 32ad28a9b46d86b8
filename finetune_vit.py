#!/usr/bin/env python
"""Step 1b: fine-tune ViT-B/16 with LoRA, one model per seed; its last 5 epoch checkpoints are posterior samples.

The backbone is loaded with AutoModelForImageClassification.from_pretrained (a hub id, or a local folder written
by save_pretrained) with a new 10-way classifier, and wrapped with peft LoRA (r=16, alpha=16, dropout 0.1, on the
attention query and value projections; the classifier is trained too). Training: Adam (lr 1e-3, weight decay
5e-3), linear lr decay without warm-up, batch 32, 15 (mnist3) or 30 (cifar10) epochs, RandomResizedCrop crops
drawn per (epoch, image) from the seed. Test images get a deterministic resize (the original code cropped them at
random, which makes test losses noisy). Images are made RGB, resized and normalised as the model's image
processor says.

Writes models/vit/<task>_<n>pc/<seed>/ckpt_epoch_<e>.pt for the last 5 epochs (the original saved 4), holding
only the trainable LoRA and classifier tensors, and metrics.json; finished seeds are skipped.
"""

from bayestda.core.cli import Parser, run
from bayestda.data.flags import add_common_args
from bayestda.models.vit import DEFAULT_VIT
from bayestda.runs.ensemble import EnsembleSpec, add_training_args, recipe_flags, train_main
from bayestda.training.loop import PRECISIONS


def main():
    p = Parser(__doc__)
    add_common_args(p)
    p.add_argument(
        "--model_name_or_path", default=DEFAULT_VIT, help="pretrained backbone: hub id or local folder with config.json"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=sorted(PRECISIONS),
        help="autocast dtype of the training forward pass, for GPUs (fp16 adds loss scaling). Scores stay float32",
    )
    add_training_args(p)
    args = p.parse_args()
    spec = EnsembleSpec(
        args.task, args.num_per_class, "vit", args.posterior, recipe_flags(p, args), args.model_name_or_path,
        precision=args.precision, label_noise=args.label_noise,
    )  # fmt: skip
    train_main(p, args, spec)


if __name__ == "__main__":
    run(main)
