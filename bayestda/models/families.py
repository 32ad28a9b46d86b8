"""Model families: how a run config becomes a model, what its checkpoints hold, what it trains with.

A family is declared once, in its own module, as a `ModelFamily` passed to `register`: under `bayestda/models/`,
`cnn.py` (the paper's CNNs), `vit.py` (ViT-B/16 with LoRA) and `logreg.py` (a linear softmax classifier, the
convex control); or in a plug-in (`core.plugins`; `examples/digits.py`). Everything else asks the family: the
training step and its script, the step-2 script folder, how a checkpoint is stored and loaded, the inputs (the
task's tensors or raw pixels), its loss (`training.losses`), its default recipe and training extras, and the
memory and solver defaults of the TDA methods. Every later step rebuilds a model from the config stored in its
checkpoint (`config["family"]`, and `config["plugins"]` for a plug-in's).

Adding a family is one module that builds the model and registers it; see the README, "Your own model and data".
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from ..core import hints, plugins
from ..core.errors import UserError
from ..core.registry import Registry
from ..core.seeds import seeded_init, stream_seed
from ..data.tasks import NAME, task_argv
from ..training.loop import TrainExtras
from ..training.losses import CROSS_ENTROPY, Loss
from ..training.posterior import label_noise_of, parse_model_name
from .func import CHUNK, HVP_CHUNK


@dataclass(frozen=True)
class ModelFamily:
    """One model family: everything the steps need to know that differs between families."""

    name: str  # recorded as config["family"]
    summary: str  # one line for --help
    archs: dict[str, str]  # step 1's --arch value -> the model name in artifact paths, e.g. cnn2 -> cnn
    build: Callable[[dict], nn.Module]  # run config -> untrained model, initialised from torch's global RNG
    train_script: str = "train_cnn.py"  # step 1 (it takes --arch)
    score_folder: str = "tda_cnn_scripts"  # step 2: <folder>/<method>.py
    arch_flag: bool = True  # whether the training script takes --arch
    train_flags: tuple[str, ...] = ()  # step-1 flags of this family that run_experiment.py passes through
    raw_pixels: bool = False  # inputs are [0, 1] pixels the model preprocesses itself, not the task's tensors
    run_config: Callable[[object], dict] = lambda spec: {}  # the family's part of a run config (EnsembleSpec)
    loss: Loss = CROSS_ENTROPY  # the per-sample training loss (`training.losses`)
    recipe: dict = field(default_factory=dict)  # training-recipe defaults (`training.recipe.TrainConfig` fields)
    dropout: bool = False  # its models have dropout layers whose rate is the recipe's `dropout` (`build` reads it)
    # (run config) -> augmentation, lr schedule, autocast (its loss is `loss`, its dropout seed set by `train_extras`)
    train_extras: Callable[[dict], TrainExtras] = lambda config: TrainExtras()
    # Memory: samples per vmapped per-sample-gradient call and vectors per vmapped Hessian-vector product
    # (`func.FunctionalModel`); on a GPU, `gpu_hvp_chunk` if given.
    chunk: int = CHUNK
    hvp_chunk: int = HVP_CHUNK
    gpu_hvp_chunk: int | None = None
    lissa_batch: int = 8  # the paper's LiSSA batch size (FastIF's DataLoader)
    # LOO retrains trained at once as one vmapped `ModelStack` (`--stack auto`), by device type: on a CPU the CNNs'
    # one-thread loop is fastest, a GPU wants wide stacks (BENCHMARKS.md)
    auto_stack: dict[str, int] = field(default_factory=lambda: {"cpu": 1, "cuda": 64})
    # λ per IF solver: the CNN's ggn default (and ekfac's, which approximates the same matrix), and for cg the paper
    # LiSSA's fixed point (CG needs H + λI positive definite, and a trained CNN's Hessian is not; `methods/influence.py`)
    # (50 = 5e-3 · 1e4, `methods.linalg.LISSA_FIXED_POINT_DAMPING`)
    if_damping: dict[str, float] = field(default_factory=lambda: {"ggn": 0.01, "cg": 50.0, "ekfac": 0.01})
    # Why a stored run config can no longer be loaded (an architecture that changed under its name), or None.
    refuse: Callable[[dict], str | None] = lambda config: None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.archs.values())

    def arch_of(self, base_model: str) -> str:
        return {name: arch for arch, name in self.archs.items()}[base_model]

    def auto_hvp_chunk(self, on_gpu: bool) -> int:
        return self.gpu_hvp_chunk if on_gpu and self.gpu_hvp_chunk else self.hvp_chunk

    def train_argv(self, model: str, task: str, num_per_class: int) -> list[str]:
        """The step-1 script and flags that train the seeds of a model name such as `cnn3-deinit`."""
        base, posterior = parse_model_name(model)
        arch = ["--arch", self.arch_of(base)] if self.arch_flag else []
        noise = ["--label_noise", str(rate)] if (rate := label_noise_of(model)) else []
        return [self.train_script, *task_argv(task), "--num_per_class", str(num_per_class), *arch,
                "--posterior", posterior, *noise]  # fmt: skip


_FAMILIES = Registry("bayestda.models", "model family")


def register(fam: ModelFamily) -> ModelFamily:
    """Make a family known to every step; a model name may belong to one family only."""
    if bad := [m for m in (fam.name, *fam.models) if not NAME.fullmatch(m)]:
        raise ValueError(f"family and model names {bad}: use lower-case letters and digits, starting with a letter "
                         "(artifact names join them with '_' and '-')")  # fmt: skip
    _FAMILIES.add(fam.name, fam)
    taken = {m: f.name for f in _FAMILIES.values() if f.name != fam.name for m in f.models}
    if clash := sorted(set(taken) & set(fam.models)):
        del _FAMILIES[fam.name]
        raise UserError(f"model family {fam.name!r} ({plugins.describe(_FAMILIES.origins.pop(fam.name))}) names "
                        f"models {clash}, which already belong to family {taken[clash[0]]!r}; rename them")  # fmt: skip
    return fam


def all_families() -> dict[str, ModelFamily]:
    return _FAMILIES.loaded()


def origin(name: str) -> str | None:
    """The plug-in that declared a family, or None for the package's own."""
    return _FAMILIES.origin(name)


def get(name: str) -> ModelFamily:
    families = all_families()
    if name not in families:
        raise UserError(f"unknown model family {name!r}; known: {', '.join(families)}; a plug-in's family needs "
                        "--plugin PATH")  # fmt: skip
    return families[name]


def of_config(config: dict, source: str = "a run") -> ModelFamily:
    """The family of a run config, its plug-ins loaded first (`core.plugins.ensure`). A config of the package's
    first runs names no family: its model name (or architecture) does."""
    plugins.ensure(config, source)
    if "family" in config:
        return get(config["family"])
    return of_model(config["model"]) if "model" in config else of_arch(config["arch"])


def check_config(config: dict, source: str, then: str = "") -> None:
    """Refuse an artifact made from a run its family can no longer load, with the command that retrains it."""
    fam = of_config(config, source)
    if why := fam.refuse(config):
        argv = fam.train_argv(config["model"], config["task"], config["num_per_class"])
        raise UserError(f"{source}: {why}: {hints.command(argv, '--overwrite')}{then}")


def model_names() -> list[str]:
    return [m for f in all_families().values() for m in f.models]


def of_model(model: str) -> ModelFamily:
    """The family of a model name such as `cnn3-deinit`; a one-line error for an unknown name."""
    names = ", ".join(model_names())
    try:
        base, _ = parse_model_name(model)
    except ValueError as exc:
        raise UserError(
            f"--model {model}: {exc}; use {names}, optionally with -deinit or -debatch, and -noisy<percent>"
        ) from None
    for fam in all_families().values():
        if base in fam.models:
            return fam
    raise UserError(f"--model {model}: unknown model {base!r}; use {names}, optionally with -deinit or -debatch")


def of_arch(arch: str) -> ModelFamily:
    for fam in all_families().values():
        if arch in fam.archs:
            return fam
    raise UserError(f"unknown --arch {arch!r}")


def _trained_by(train_script: str) -> list[ModelFamily]:
    """The families a training script trains, picked by its --arch."""
    return [f for f in all_families().values() if f.train_script == train_script and f.arch_flag]


def archs(train_script: str) -> list[str]:
    """The --arch values of the families a training script trains."""
    return [a for f in _trained_by(train_script) for a in f.archs]


def defaults(describe: Callable[[ModelFamily], object]) -> str:
    """Each family's default of something, for --help: e.g. `cnn 128, vit 16, logreg 128`."""
    return ", ".join(f"{f.name} {describe(f)}" for f in all_families().values())


def arch_help(train_script: str) -> str:
    """--help of a training script's --arch: each family's archs (and model names) and its summary."""
    parts = []
    for f in _trained_by(train_script):
        names = ", ".join(f"{a} (model name {m})" for a, m in f.archs.items())
        parts.append(f"{names}: {f.summary}")
    return "; ".join(parts)


def build(config: dict) -> nn.Module:
    """A model of the config's family, initialised from torch's global RNG."""
    return of_config(config).build(config)


def init(config: dict) -> nn.Module:
    """The run's initial model: a function of the config's `init_seed` only.

    Built once per process and copied after that: every LOO retrain and every checkpoint load starts
    here, and for the ViT a build reads the whole backbone from disk.
    """
    key = {k: v for k, v in config.items() if k != "epoch"}  # a checkpoint's epoch does not change the init
    return copy.deepcopy(_initial_model(json.dumps(key, sort_keys=True)))


@lru_cache(maxsize=2)
def _initial_model(config_json: str) -> nn.Module:
    config = json.loads(config_json)
    return seeded_init(config["init_seed"], lambda: build(config))


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: a model's `trainable_state()` if it has one (the ViT), else everything."""
    if hasattr(model, "trainable_state"):
        return model.trainable_state()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> nn.Module:
    if hasattr(model, "load_trainable_state"):
        model.load_trainable_state(state, source)
    else:
        model.load_state_dict(state)
    return model


def from_state(config: dict, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> nn.Module:
    """The model of a checkpoint (config and stored tensors), in eval mode; torch's global RNG is untouched."""
    return load_state(init(config), state, source).eval()


def train_extras(config: dict) -> TrainExtras:
    """What a run trains with beyond its recipe: the family's loss and extras, and a dropout seed when the recipe
    has dropout (drawn from the batch seed, so retrains see the run's masks)."""
    fam = of_config(config)
    extras = dataclasses.replace(fam.train_extras(config), loss=fam.loss)
    if config.get("dropout") and extras.rng_seed is None:
        extras = dataclasses.replace(extras, rng_seed=stream_seed(config["batch_seed"], "dropout"))
    return extras


def loss(config: dict) -> Loss:
    """The per-sample loss a run trained with."""
    return of_config(config).loss


def running_statistics(config: dict) -> str:
    """The layers of a run's model that update buffers in training mode (BatchNorm's running statistics), named in a
    phrase; empty if none."""
    model = init(config) if "init_seed" in config else seeded_init(0, lambda: build(config))
    names = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             and m.track_running_stats]  # fmt: skip
    return f"{type(dict(model.named_modules())[names[0]]).__name__} layers ({', '.join(names[:3])})" if names else ""
