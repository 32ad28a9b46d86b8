#!/usr/bin/env python
"""Step 0: draw the balanced, nested train subsets and the test subset, as committed index files.

Writes data/<task>/train_subset_<n>pc.txt (n per class, each inside the next larger one; `all`: the whole training
split of the task's classes, train_subset_allpc.txt) and data/<task>/test_subset.txt (the task's test subset: 300
per class for mnist3, 50 for cifar10), one index per line into the train or test split. Drawing uses a fixed RNG
seed, so rerunning reproduces the files. A plug-in's task (--plugin) gets its files the same way.

With --subsets paper nothing is written: the original code's index files are read in place from
--paper_subsets_dir, and checked and described (sizes, class counts, warnings) as the later steps will use them.
"""

from bayestda.core.cli import Parser, run
from bayestda.core.paths import resolve_data_root, resolve_out_root
from bayestda.data.flags import _size, add_data_root, add_subsets_args
from bayestda.data.subsets import SUBSET_SIZES, check_paper_subsets, write_subsets
from bayestda.data.tasks import all_tasks, get_task, summaries


def main():
    p = Parser(__doc__)
    p.add_argument("--task", default="all", help=f"which task's subsets, or all of them: {summaries()}")
    p.add_argument("--num_per_class", type=_size, nargs="+",
                   help=f"train subset sizes per class, or all (the whole split); default "
                   f"{' '.join(map(str, SUBSET_SIZES))} (paper: every file there)")  # fmt: skip
    add_data_root(p)
    p.add_argument("--out_root", default=None, help="writes <out_root>/data/<task>/; default: the repository")
    p.add_argument("--overwrite", action="store_true", help="replace index files that differ from a fresh draw")
    add_subsets_args(p)
    p.after_parse(lambda ns: ns.task == "all" or get_task(ns.task))  # an unknown task is a flag error
    args = p.parse_args()
    if args.task == "all":
        tasks = [t.name for t in all_tasks().values() if args.subsets != "paper" or t.paper_subsets]
    else:
        tasks = [get_task(args.task).task]
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
