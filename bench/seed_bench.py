"""What the benchmarks on one trained seed share: their flags, the seed's posterior samples (step 1 must have
trained it), and running one measured job alone in a fresh interpreter. Imported by the bench_*.py scripts, which put the repository on sys.path first."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def parser(doc: str, task: str = "mnist3", threads: str | None = "torch threads") -> argparse.ArgumentParser:
    """--model --task --num_per_class --seed_id [--threads] --out_root --data_root; a script adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", help="trained model: cnn, cnn3, logreg")
    p.add_argument("--task", default=task, help="mnist3 or cifar10")
    p.add_argument("--num_per_class", type=int, default=50, help="training images per class")
    p.add_argument("--seed_id", type=int, default=0, help="line K (0-based) of seeds.txt")
    if threads:
        p.add_argument("--threads", type=int, default=2, help=threads)
    p.add_argument("--out_root", help="root of models/ (default: this repository)")
    p.add_argument("--data_root", help="datasets (default: $BAYESTDA_DATA_ROOT, else ./data)")
    return p


def seed_samples(args):
    """The seed's `SeedSamples`: its checkpoints and the data they are scored on."""
    from bayestda.core.paths import REPO_ROOT, read_seeds, resolve_data_root
    from bayestda.runs.samples import load_seed_samples

    out_root = Path(args.out_root) if args.out_root else REPO_ROOT
    return load_seed_samples(args.model, args.task, args.num_per_class, read_seeds()[args.seed_id], out_root,
                             resolve_data_root(args.data_root))  # fmt: skip


def run_alone(script: str, *job: str) -> tuple[dict | None, str]:
    """`script` again with this run's flags plus `job` (its internal flag that picks one job), in a fresh interpreter
    so that the job's time and peak memory are its own: (the JSON of its last output line, "") or (None, its last
    error line)."""
    proc = subprocess.run([sys.executable, script, *sys.argv[1:], *job], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def add_scratch_retrain_args(p: argparse.ArgumentParser, arch: str, task: str, num_per_class: int) -> None:
    """--arch --task --num_per_class --data_root of a benchmark of LOO `scratch` retrains (`scratch_retrains`)."""
    from bayestda.models import families

    p.add_argument("--arch", default=arch, choices=families.archs("train_cnn.py"), help="the model to retrain")
    p.add_argument("--task", default=task, choices=["mnist3", "cifar10"])
    p.add_argument("--num_per_class", type=int, default=num_per_class)
    p.add_argument("--data_root", default=None)


def scratch_retrains(args, device="cpu"):
    """(`RetrainContext`, train, test) of LOO `scratch` retrains of `args.arch` on the task's training subset, as
    `tda_cnn_scripts/loo.py` runs them: initialisation and batch order of seed 0, the task's epochs, test losses at
    the last 5 epochs."""
    from bayestda.core.paths import REPO_ROOT, resolve_data_root
    from bayestda.data.subsets import load_subset
    from bayestda.data.tasks import get_task
    from bayestda.models import families
    from bayestda.runs import retrains
    from bayestda.training.loop import batch_orders
    from bayestda.training.recipe import TrainConfig

    data_root = resolve_data_root(args.data_root)
    train = load_subset(args.task, "train", args.num_per_class, data_root, REPO_ROOT)
    test = load_subset(args.task, "test", None, data_root, REPO_ROOT).to(device)
    cfg = TrainConfig(epochs=get_task(args.task).epochs)
    config = {"family": families.of_arch(args.arch).name, "arch": args.arch, "task": args.task, "init_seed": 0}
    ctx = retrains.RetrainContext(config, train, test, cfg, batch_orders(len(train), cfg.epochs, 0), start_states=[],
                                  eval_epochs=tuple(range(cfg.epochs - 4, cfg.epochs + 1)), device=str(device))  # fmt: skip
    return ctx, train, test
