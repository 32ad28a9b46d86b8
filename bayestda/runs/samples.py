"""One seed's posterior samples: its last-5-epoch checkpoints, read once, and the data they are scored on.

The checkpoints' configs say how they were trained (task, n, architecture, seeds, hyperparameters), so no
flag is repeated, and a checkpoint of another experiment, or a training subset that changed since, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts.checkpoints import read_run, retrain_command
from ..core.errors import UserError
from ..core.paths import seed_model_dir
from ..data import label_noise
from ..data.subsets import Subset, load_subset
from ..data.tasks import get_task
from ..models import families
from .ensemble import indices_digest, train_command


@dataclass
class SeedSamples:
    """One seed's posterior samples (its checkpoints, read once) and the data they are scored on."""

    seed: int
    checkpoints: list[dict]  # read_checkpoint() records, oldest first
    train: Subset
    test: Subset
    seed_dir: Path | None = None  # where the run is stored (for the command that retrains it)

    @property
    def configs(self) -> list[dict]:
        return [c["config"] for c in self.checkpoints]

    @property
    def epochs(self) -> list[int]:
        return [c["epoch"] for c in self.configs]

    def models(self, device=None, dtype=None):
        """The checkpoints as models in eval mode (a fresh copy each time)."""
        for ckpt in self.checkpoints:
            yield families.from_state(ckpt["config"], ckpt["state_dict"]).to(device=device, dtype=dtype).eval()


def load_seed_samples(
    model: str, task: str, num_per_class: int, seed: int, out_root: Path, data_root: Path
) -> SeedSamples:
    seed_dir = seed_model_dir(out_root, model, task, num_per_class, seed)
    train_cmd = train_command(model, task, num_per_class)
    checkpoints = read_run(seed_dir, train_cmd)
    cfg = checkpoints[0]["config"]
    if (cfg["model"], cfg["task"], cfg["num_per_class"], cfg["seed"]) != (model, task, num_per_class, seed):
        raise UserError(f"{seed_dir} holds a run trained as {cfg['model']} {cfg['task']} {cfg['num_per_class']}pc seed "
                        f"{cfg['seed']}, not {model} {task} {num_per_class}pc seed {seed}; retrain it with: "
                        f"{retrain_command(seed_dir)}")  # fmt: skip
    pixels = families.of_config(checkpoints[0]["config"]).raw_pixels
    train = load_subset(task, "train", num_per_class, data_root, out_root, pixels)
    if indices_digest(train.idx) != checkpoints[0]["config"]["train_idx_sha1"]:
        raise UserError(f"the {task} training subset of {num_per_class} per class changed since {seed_dir} was trained; "
                        f"retrain with: {train_cmd} --overwrite")  # fmt: skip
    train = label_noise.apply_recorded(train, cfg, get_task(task).classes, str(seed_dir))  # a noisy run's labels
    test = load_subset(task, "test", None, data_root, out_root, pixels)
    return SeedSamples(seed, checkpoints, train, test, seed_dir)
