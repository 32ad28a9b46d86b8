#!/usr/bin/env python
"""Run a whole experiment: subsets -> train (per seed) -> each TDA method (per seed) -> p-values -> correlations.

Builds the task graph from the step scripts and runs every task whose outputs are missing, skipping the rest,
so an interrupted or failed run continues where it stopped. Each task is the step script a user would run
by hand; its output goes to logs/<experiment>/<task>.log. A failed task is retried once, then the run stops
and reports what failed and where its log is.

Backends: local (default; one task per GPU pinned with CUDA_VISIBLE_DEVICES, or --jobs CPU tasks sharing
the cores), ray (the same graph as Ray tasks on a local or multi-node cluster), slurm (one job array per
stage through submitit; with --dry_run, sbatch scripts and a submit.sh to run by hand).

Examples:
  python run_experiment.py --task mnist3 --num_per_class 10 --jobs 2
  python run_experiment.py --task mnist3 --num_per_class 50 --methods loo-scratch,if-cg --gpus 0,1,2,3
  python run_experiment.py --task cifar10 --num_per_class 10 --backend slurm --slurm_partition gpu --dry_run
"""

from bayestda.core.cli import run
from bayestda.pipeline.cli import main

if __name__ == "__main__":
    run(lambda: main(__doc__))
