"""Steps 1a/1b: train the seed-indexed ensemble whose last-5-epoch checkpoints are posterior samples.

A run is fixed by its `EnsembleSpec` (task, training-set size, model family and architecture, posterior mode, recipe,
label noise) and its seed; `run_config` writes all of it, with the plug-ins that declared its task and family, into
every checkpoint and `metrics.json`, so that later steps need no flag repeated.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..artifacts.checkpoints import save_checkpoint, seed_is_complete
from ..core import __version__, hints
from ..core.cli import resolve_device
from ..core.errors import UserError
from ..core.io import atomic_write_json, remove_stale_temp_files
from ..core.options import add_arguments, from_args
from ..core.paths import (
    checkpoint_file,
    last_epochs,
    metrics_file,
    resolve_data_root,
    resolve_out_root,
    seed_model_dir,
    select_seeds,
)
from ..data import label_noise, tasks
from ..data.subsets import Subset, load_subset
from ..data.tasks import get_task
from ..models import families
from ..models.vit import DEFAULT_VIT, LoraSpec
from ..training.loop import batch_orders, evaluate, train
from ..training.posterior import POSTERIOR_MODES, model_name, parse_model_name, posterior_seeds
from ..training.recipe import RecipeOptions, TrainConfig, make_optimizer
from ..training.recipe import resolve as resolve_recipe


@dataclass(frozen=True)
class EnsembleSpec:
    """What a training run depends on; everything else (seed) varies across ensemble members."""

    task: str
    num_per_class: int | str  # training images per class, or "all"
    arch: str = "cnn2"  # an --arch of a model family (`families`): cnn2, cnn3, logreg; vit
    posterior: str = "de"
    recipe: RecipeOptions = field(default_factory=RecipeOptions)  # the recipe's flags; the rest from family and task
    model_name_or_path: str = DEFAULT_VIT  # vit: the backbone, a hub id or a local save_pretrained folder
    lora: LoraSpec = field(default_factory=LoraSpec)  # vit
    precision: str = "fp32"  # vit: autocast dtype of the training forward pass on GPU
    label_noise: float = 0.0  # share of training labels flipped (`label_noise.py`)

    @property
    def family(self) -> families.ModelFamily:
        return families.of_arch(self.arch)

    @property
    def model(self) -> str:
        return model_name(self.family.archs[self.arch], self.posterior, self.label_noise)

    @property
    def train_config(self) -> TrainConfig:
        """The run's recipe (`training.recipe.resolve`); a dropout rate for a family without dropout is refused."""
        task, family = get_task(self.task), self.family
        cfg = resolve_recipe(task.recipe, task.epochs, family.recipe, self.recipe)
        if cfg.dropout and not family.dropout:
            raise UserError(f"--dropout {cfg.dropout:g}: the {family.name} family's models have no dropout layers; "
                            "leave it at 0")  # fmt: skip
        return cfg


def recipe_of(model: str, task: str, flags: RecipeOptions) -> TrainConfig:
    """The recipe the seeds of a model name (`cnn3-deinit`) on a task train with under these flags; a one-line error
    for one they cannot train with."""
    family = families.of_model(model)
    return EnsembleSpec(task, 1, family.arch_of(parse_model_name(model)[0]), recipe=flags).train_config


def indices_digest(idx: torch.Tensor) -> str:
    return hashlib.sha1(idx.numpy().tobytes()).hexdigest()[:16]


@cache
def _family_config(spec: EnsembleSpec) -> dict:
    return spec.family.run_config(spec)


def run_config(spec: EnsembleSpec, seed: int, train_data: Subset) -> dict:
    """Everything that shaped a seed's weights; stored in each checkpoint and in metrics.json."""
    init_seed, batch_seed = posterior_seeds(spec.posterior, seed)
    declared_by = sorted({o for o in (tasks.origin(spec.task), families.origin(spec.family.name)) if o is not None})
    return {
        "family": spec.family.name,
        "model": spec.model,
        "arch": spec.arch,
        "task": spec.task,
        "num_per_class": spec.num_per_class,
        "seed": seed,
        "posterior": spec.posterior,
        "init_seed": init_seed,
        "batch_seed": batch_seed,
        "n_train": len(train_data),
        "train_idx_sha1": indices_digest(train_data.idx),
        **spec.train_config.as_dict(),
        **_family_config(spec),
        **label_noise.config_entry(train_data.y, get_task(spec.task).classes, spec.label_noise),
        **({"plugins": declared_by} if declared_by else {}),  # what later steps load to rebuild the model
    }


def train_seed(spec: EnsembleSpec, seed: int, train_data: Subset, test_data: Subset, seed_dir: Path, device) -> dict:
    """Train one ensemble member, writing its last 5 checkpoints and then metrics.json (the done marker)."""
    config = run_config(spec, seed, train_data)
    train_data = label_noise.apply_recorded(train_data, config, get_task(spec.task).classes, str(seed_dir))
    cfg = spec.train_config
    remove_stale_temp_files(seed_dir)
    metrics_file(seed_dir).unlink(missing_ok=True)  # a rerun with --overwrite is unfinished until the end
    for old in seed_dir.glob("ckpt_epoch_*.pt"):  # no checkpoint of an earlier run stays beside the new ones
        old.unlink()
    model = families.init(config).to(device)
    optimizer = make_optimizer(model, cfg)
    orders = batch_orders(len(train_data), cfg.epochs, config["batch_seed"])
    keep = set(last_epochs(cfg.epochs))
    history = []
    extras = families.train_extras(config)

    def on_epoch_end(epoch, model, optimizer, train_loss):
        test_losses, test_acc = evaluate(model, test_data, extras.loss)
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "test_loss": test_losses.mean().item(), "test_acc": test_acc}
        )
        if epoch in keep:
            save_checkpoint(checkpoint_file(seed_dir, epoch), model, optimizer, {**config, "epoch": epoch})

    start = time.perf_counter()
    bar = lambda it: tqdm(it, desc=f"seed {seed}", unit="epoch", leave=False)  # noqa: E731
    train(model, optimizer, train_data, orders, cfg, extras=extras, on_epoch_end=on_epoch_end, progress=bar)
    metrics = {
        "config": config,
        "epochs": history,
        "final_test_acc": history[-1]["test_acc"],
        "wall_time_s": round(time.perf_counter() - start, 3),
        "device": str(device),
        "fp32_precision": torch.backends.cudnn.conv.fp32_precision,  # TF32 or IEEE convs on a GPU
        "threads": torch.get_num_threads(),  # CPU kernels sum in another order with another thread count
        "versions": {"torch": str(torch.__version__), "bayestda": __version__},
    }
    atomic_write_json(metrics, metrics_file(seed_dir))
    return metrics


def train_ensemble(
    spec: EnsembleSpec, seeds: list[int], data_root: Path, out_root: Path, device, overwrite: bool = False
):
    """Train every seed that is not already finished; returns {seed: metrics or None if skipped}."""
    pixels = spec.family.raw_pixels
    train_data = load_subset(spec.task, "train", spec.num_per_class, data_root, out_root, pixels)
    test_data = load_subset(spec.task, "test", None, data_root, out_root, pixels).to(device)
    seed_dirs = {seed: seed_model_dir(out_root, spec.model, spec.task, spec.num_per_class, seed) for seed in seeds}
    # Plan first, so a conflicting earlier run is reported before any work starts.
    done = {s for s, d in seed_dirs.items() if not overwrite and seed_is_complete(d, run_config(spec, s, train_data))}
    results = dict.fromkeys(done)
    todo = [s for s in seeds if s not in done]
    for seed in tqdm(
        todo, desc=f"train {spec.model} {spec.task} {spec.num_per_class}pc", unit="seed", disable=not todo
    ):
        results[seed] = train_seed(spec, seed, train_data, test_data, seed_dirs[seed], device)
    return {seed: results[seed] for seed in seeds}


def train_command(model: str, task: str, num_per_class: int, *extra: str) -> str:
    """The step-1 command that trains the seeds of a model name such as `cnn3-deinit` or `vit`."""
    return hints.command(families.of_model(model).train_argv(model, task, num_per_class), *extra)


def add_training_args(p) -> None:
    """The flags train_cnn.py and finetune_vit.py share beyond the common ones."""
    p.add_argument(
        "--posterior",
        default="de",
        choices=POSTERIOR_MODES,
        help="de: the seed varies the initialisation and the batch order (paper; ViT: LoRA/classifier init, batch "
        "order and crops); de-init: only the initialisation; de-batch: only the batch order",
    )
    add_arguments(p.add_argument_group("training recipe (training.recipe)"), RecipeOptions)
    p.add_argument("--label_noise", type=float, default=0.0,
                   help="share of training labels flipped to another class (the same for every seed; the model is "
                   "named <model>-noisy<percent>, e.g. cnn-noisy10), for mislabel detection; 0: clean labels")  # fmt: skip


def recipe_flags(p, args) -> RecipeOptions:
    """The recipe flags of a parsed command line (`add_training_args`); a flag out of range is a flag error."""
    try:
        return from_args(RecipeOptions, args)
    except UserError as exc:
        p.error(str(exc))


def train_main(p, args, spec: EnsembleSpec) -> None:
    """What train_cnn.py and finetune_vit.py do once their flags are parsed: train the missing seeds, report."""
    if not 0 <= spec.label_noise < 1:
        p.error(f"--label_noise must be in [0, 1), got {spec.label_noise}")
    try:
        spec.model  # noqa: B018 (names the model: a rate that is not a whole percent has no name)
        spec.train_config  # noqa: B018 (a recipe that cannot be trained is a flag error)
    except (ValueError, UserError) as exc:
        p.error(str(exc))
    results = train_ensemble(
        spec,
        select_seeds(args.seed_id),
        resolve_data_root(args.data_root),
        resolve_out_root(args.out_root),
        resolve_device(args.device),
        overwrite=args.overwrite,
    )
    for seed, metrics in results.items():
        status = "already trained, skipped" if metrics is None else f"test acc {metrics['final_test_acc']:.2f}%"
        print(f"{spec.model} {spec.task} {spec.num_per_class}pc seed {seed}: {status}")
