#!/usr/bin/env python
"""Step 0: draw the balanced, nested train subsets and the test subset, as committed index files.

Writes data/<task>/train_subset_<n>pc.txt (n per class, each inside the next larger one) and
data/<task>/test_subset.txt (300 per class for mnist3, 50 for cifar10), one index per line into the
torchvision train or test split. Drawing uses a fixed RNG seed, so rerunning reproduces the files.

With --subsets paper nothing is written: the original code's index files are read in place from
--paper_subsets_dir, and checked and described (sizes, class counts, warnings) as the later steps will use them.
"""

from bayestda.cli import Parser, add_subsets_args, at_least, run
from bayestda.data import SUBSET_SIZES, TASKS, check_paper_subsets, get_task, write_subsets
from bayestda.paths import DATA_ROOT_ENV, resolve_data_root, resolve_out_root


def main():
    p = Parser(__doc__)
    p.add_argument("--task", default="all", choices=["all", *sorted(TASKS)], help="which task's subsets")
    p.add_argument(
        "--num_per_class",
        type=at_least(1),
        nargs="+",
        help=f"train subset sizes; default {' '.join(map(str, SUBSET_SIZES))} (paper: every file there)",
    )
    p.add_argument("--data_root", default=None, help=f"dataset folder; default ${DATA_ROOT_ENV}, else ./data")
    p.add_argument("--out_root", default=None, help="writes <out_root>/data/<task>/; default: the repository")
    p.add_argument("--overwrite", action="store_true", help="replace index files that differ from a fresh draw")
    add_subsets_args(p)
    args = p.parse_args()
    tasks = sorted(TASKS) if args.task == "all" else [get_task(args.task).task]
    if args.subsets == "paper":
        for task in tasks:
            print("\n".join(check_paper_subsets(task, resolve_data_root(args.data_root), args.num_per_class)))
        return
    for task in tasks:
        for line in write_subsets(
            task,
            resolve_data_root(args.data_root),
            resolve_out_root(args.out_root),
            args.num_per_class or SUBSET_SIZES,
            args.overwrite,
        ):
            print(line)


if __name__ == "__main__":
    run(main)
