"""Where every artifact lives (../shared/DESIGN.md's contract), and the seed list.

All paths are relative to an `out_root` (default: the repository root). Subset index files are
committed under the repository's `data/`; an `out_root` may hold its own copy, which then wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT_ENV = "BAYESTDA_DATA_ROOT"
SEEDS_FILE = REPO_ROOT / "seeds.txt"
N_LAST_CKPTS = 5  # checkpoints of the last 5 epochs are the SWA-like posterior samples


def resolve_data_root(flag: str | None) -> Path:
    """--data_root if given, else $BAYESTDA_DATA_ROOT, else ./data."""
    return Path(flag or os.environ.get(DATA_ROOT_ENV) or "data")


def resolve_out_root(flag: str | None) -> Path:
    return Path(flag) if flag else REPO_ROOT


def read_seeds(path: Path = SEEDS_FILE) -> list[int]:
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        raise UserError(f"seed list {path} is missing; restore it with `git checkout seeds.txt`") from None
    return [int(s) for s in lines]


def select_seeds(seed_id: int | None, path: Path = SEEDS_FILE) -> list[int]:
    """`--seed_id K` picks line K (0-based) of seeds.txt; no seed_id means every seed."""
    seeds = read_seeds(path)
    if seed_id is None:
        return seeds
    if not 0 <= seed_id < len(seeds):
        raise UserError(
            f"--seed_id {seed_id} is out of range: {path.name} has {len(seeds)} seeds, so use 0..{len(seeds) - 1}"
        )
    return [seeds[seed_id]]


def subset_dir(out_root: Path, task: str) -> Path:
    return out_root / "data" / task


def train_subset_file(out_root: Path, task: str, num_per_class: int) -> Path:
    return subset_dir(out_root, task) / f"train_subset_{num_per_class}pc.txt"


def test_subset_file(out_root: Path, task: str) -> Path:
    return subset_dir(out_root, task) / "test_subset.txt"


def find_subset_file(out_root: Path, name: str, task: str) -> Path | None:
    """An index file under out_root/data/<task>, else the committed one under the repository."""
    for root in dict.fromkeys([out_root, REPO_ROOT]):
        path = subset_dir(root, task) / name
        if path.exists():
            return path
    return None


ALL = "all"  # a training-set size: the whole split (of a task's classes), `--num_per_class all`


def size_of(text: str) -> int | str | None:
    """A training-set size as written (`50`, `all`) -> 50 or "all"; None for anything else."""
    return int(text) if text.isdigit() else ALL if text == ALL else None


def size_of_token(token: str) -> int | str | None:
    """The training-set size of an artifact name's `<n>pc` part: `50pc` -> 50, `allpc` -> "all"; None otherwise."""
    return size_of(token[:-2]) if token.endswith("pc") else None


def experiment_name(model: str, task: str, num_per_class: int | str) -> str:
    """E.g. `cnn_mnist3_50pc` or `cnn3-deinit_mnist3_50pc`."""
    return f"{model}_{task}_{num_per_class}pc"


def split_experiment_name(name: str) -> tuple[str, str, int | str] | None:
    """`cnn3-deinit_mnist3_50pc` -> ("cnn3-deinit", "mnist3", 50); None for a name not of that form."""
    parts = name.split("_")
    if len(parts) != 3 or (size := size_of_token(parts[2])) is None:
        return None
    return parts[0], parts[1], size


def run_dir(out_root: Path, model: str, task: str, num_per_class: int | str) -> Path:
    """The folder of an experiment's training runs, one sub-folder per seed."""
    return Path(out_root) / "models" / model / f"{task}_{num_per_class}pc"


def seed_model_dir(out_root: Path, model: str, task: str, num_per_class: int | str, seed: int) -> Path:
    return run_dir(out_root, model, task, num_per_class) / str(seed)


def parse_seed_dir(seed_dir: Path) -> tuple[str, str, int | str, int] | None:
    """`.../models/cnn3/mnist3_50pc/7` -> ("cnn3", "mnist3", 50, 7); None for a folder outside the layout."""
    seed_dir = Path(seed_dir)
    model, run, seed = seed_dir.parent.parent.name, seed_dir.parent.name, seed_dir.name
    task, _, n = run.rpartition("_")
    size = size_of_token(n)
    if seed_dir.parent.parent.parent.name != "models" or not seed.isdigit() or size is None:
        return None
    return model, task, size, int(seed)


def checkpoint_file(seed_dir: Path, epoch: int) -> Path:
    """Weights after `epoch` epochs (1-based: ckpt_epoch_15.pt is the model after 15 epochs)."""
    return seed_dir / f"ckpt_epoch_{epoch}.pt"


def metrics_file(seed_dir: Path) -> Path:
    """Written last, so its presence marks a finished seed."""
    return seed_dir / "metrics.json"


def last_epochs(epochs: int) -> list[int]:
    return list(range(max(1, epochs - N_LAST_CKPTS + 1), epochs + 1))


def score_file(out_root: Path, model: str, method: str, task: str, num_per_class: int, seed: int) -> Path:
    return out_root / "tda_scores" / model / method / f"{task}_{num_per_class}pc" / f"{seed}.pt"


def subset_retrain_file(out_root: Path, model: str, task: str, num_per_class: int, seed: int) -> Path:
    """One seed's LDS ground truth: the test losses of its retrains on random subsets (`subset_retrains`)."""
    return out_root / "retrains" / model / "lds" / f"{task}_{num_per_class}pc" / f"{seed}.pt"


def self_influence_file(out_root: Path, model: str, method: str, task: str, num_per_class: int, seed: int) -> Path:
    """One seed's self-influence τ(z_j, z_j) of a method (`mislabel`)."""
    return out_root / "self_influence" / model / method / f"{task}_{num_per_class}pc" / f"{seed}.pt"


def results_dir(out_root: Path, model: str, task: str, num_per_class: int) -> Path:
    return out_root / "results" / experiment_name(model, task, num_per_class)
