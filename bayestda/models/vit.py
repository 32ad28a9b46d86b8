"""The paper's second model family: a HF ViT image classifier with LoRA adapters (peft).

`build_vit` loads the backbone with `AutoModelForImageClassification.from_pretrained` (a hub id, or a local
directory holding `config.json`), then wraps it with LoRA on the attention query and value projections and
a trained classifier. `ViTClassifier` exposes it as a plain `forward(pixels) -> logits` module, so the one
training loop and every TDA method treat it like the CNNs; only its trainable parameters (LoRA and the
classifier) are trained, scored and saved.

Inputs are the task's images as [0, 1] pixels (MNIST: 1 channel, 28×28). The classifier makes them RGB,
resizes them to the backbone's size and normalises them with its processor's mean and std, so every
method sees the same deterministic preprocessing. Training instead feeds RandomResizedCrop crops
(`train_extras`), drawn per (epoch, sample) from the run's batch seed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import UserError
from ..core.seeds import stream_seed
from ..data.tasks import get_task
from ..training.loop import TrainExtras
from . import families

DEFAULT_VIT = "google/vit-base-patch16-224-in21k"


@dataclass(frozen=True)
class LoraSpec:
    """The paper's LoRA: r=16, alpha=16 on the attention query and value projections, dropout 0.1."""

    r: int = 16
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "value")  # names in transformers < 5; 5.x calls them q_proj, v_proj

    def as_dict(self) -> dict:
        return asdict(self)


# transformers 5 renamed ViT's attention projections; the paper's "query/value" are the same layers.
_RENAMED = {"query": "q_proj", "value": "v_proj"}


class ViTClassifier(nn.Module):
    """A peft-wrapped HF image classifier seen as `forward(pixels in [0, 1]) -> logits`."""

    def __init__(self, peft_model: nn.Module, image: ImageSpec):
        super().__init__()
        self.net = peft_model
        self.image = image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=self.image.prepare(x)).logits

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Exactly the trained tensors (LoRA and classifier): what a checkpoint holds."""
        return {k: v.detach().cpu().clone() for k, v in self.named_parameters() if v.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
        own = {k: v for k, v in self.named_parameters() if v.requires_grad}
        if own.keys() != state.keys() or any(own[k].shape != state[k].shape for k in own):
            missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
            shapes = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
            raise UserError(
                f"{source} does not match this LoRA configuration "
                f"(missing {missing[:3]}, unexpected {extra[:3]}, other shapes {shapes[:3]}); "
                "was it trained with another --model_name_or_path or LoRA setting?"
            )
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k])


def _check_source(name_or_path: str) -> None:
    path = Path(name_or_path)
    if path.exists() and not (path / "config.json").is_file():
        raise UserError(
            f"{path} has no config.json, so it is not a saved transformers model; "
            "pass a hub id (e.g. google/vit-base-patch16-224-in21k) or a folder written by save_pretrained"
        )


def _target_modules(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    resolved = [t if t in leaf_names else _RENAMED.get(t, t) for t in targets]
    if missing := [t for t in resolved if t not in leaf_names]:
        raise UserError(f"the model has no modules named {missing} to put LoRA on")
    return resolved


def build_vit(name_or_path: str, num_labels: int, lora: LoraSpec, image: ImageSpec | None = None) -> ViTClassifier:
    """The backbone from `name_or_path` with a new `num_labels` classifier, wrapped with LoRA.

    `image` defaults to the model's image processor (`ImageSpec.from_pretrained`). The new classifier
    and LoRA's A matrices are initialised from torch's global RNG: seed it first.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    _check_source(name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the expected "classifier newly initialised" report is noise here
    try:
        # Eager attention: torch's fused SDPA kernels have no vmap batching rule and no forward-mode AD,
        # which the per-sample gradients and Hessian-vector products of the TDA methods need.
        base = AutoModelForImageClassification.from_pretrained(
            name_or_path, num_labels=num_labels, ignore_mismatched_sizes=True, attn_implementation="eager"
        )
    except OSError as exc:
        raise UserError(f"cannot load a model from {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        target_modules=_target_modules(base, lora.targets),
        lora_dropout=lora.dropout,
        bias="none",
        modules_to_save=["classifier"],
    )
    return ViTClassifier(get_peft_model(base, config), image or ImageSpec.from_pretrained(name_or_path))


@dataclass(frozen=True)
class ImageSpec:
    """How the backbone wants its pixels: square size, per-channel mean and std (from its image processor)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> ImageSpec:
        from transformers import AutoConfig, AutoImageProcessor

        _check_source(name_or_path)
        try:
            proc = AutoImageProcessor.from_pretrained(name_or_path)
        except OSError:
            try:
                size = AutoConfig.from_pretrained(name_or_path).image_size
            except OSError as exc:
                raise UserError(f"cannot load the config of {name_or_path!r}: {str(exc).splitlines()[0]}") from None
            print(f"warning: {name_or_path} has no image processor; using its image_size {size} "
                  "and mean = std = 0.5 (as the in21k ViTs)", file=sys.stderr)  # fmt: skip
            return cls(int(size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        return cls(int(proc.size["height"]), tuple(proc.image_mean), tuple(proc.image_std))

    def as_dict(self) -> dict:
        return asdict(self)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic preprocessing (every scored image): to RGB, bilinear resize to size × size."""
        x = _rgb(x)
        if x.shape[-2:] == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone sees for `x`: resized and normalised."""
        return self.normalise(self.resize(x))

    def random_resized_crop(
        self, x: torch.Tensor, gen: torch.Generator | Sequence[torch.Generator], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
    ) -> torch.Tensor:
        """Training augmentation as torchvision's RandomResizedCrop, resized to size × size (not normalised).

        One crop per image, drawn from `gen` (one generator, or one per image).
        """
        x = _rgb(x)
        gens = [gen] * len(x) if isinstance(gen, torch.Generator) else list(gen)
        h, w = x.shape[-2:]
        out = []
        for img, g in zip(x, gens, strict=True):
            top, left, ch, cw = _crop_box(h, w, scale, ratio, g)
            crop = img[None, :, top : top + ch, left : left + cw]
            out.append(F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True))
        return torch.cat(out)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _crop_box(h: int, w: int, scale, ratio, gen: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, with an explicit generator."""
    area = h * w
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=gen)).item()
        cw, ch = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            top = torch.randint(0, h - ch + 1, (1,), generator=gen).item()
            left = torch.randint(0, w - cw + 1, (1,), generator=gen).item()
            return top, left, ch, cw
    side = min(h, w)  # fallback: the central square crop
    return (h - side) // 2, (w - side) // 2, side, side


# ----------------------------------------------------------------------------- run configs


def vit_run_config(name_or_path: str, lora: LoraSpec, precision: str, num_labels: int = 10) -> dict:
    """The ViT-specific part of a run config (JSON-native, as metrics.json stores it)."""
    image = ImageSpec.from_pretrained(name_or_path)
    local = Path(name_or_path)
    return {
        "model_name_or_path": str(local.resolve()) if local.exists() else str(name_or_path),  # runnable from anywhere
        "num_labels": num_labels,
        "lora": {**lora.as_dict(), "targets": list(lora.targets)},
        "image": {"size": image.size, "mean": list(image.mean), "std": list(image.std)},
        "lr_schedule": "linear",
        "augment": "random_resized_crop",
        "precision": precision,
    }


def image_spec(config: dict) -> ImageSpec:
    image = config["image"]
    return ImageSpec(image["size"], tuple(image["mean"]), tuple(image["std"]))


def vit_from_config(config: dict) -> ViTClassifier:
    """The untrained classifier a run config describes (LoRA and classifier from torch's global RNG)."""
    lora = LoraSpec(**{**config["lora"], "targets": tuple(config["lora"]["targets"])})
    return build_vit(config["model_name_or_path"], config["num_labels"], lora, image_spec(config))


def vit_train_extras(config: dict) -> TrainExtras:
    """Crops per (epoch, sample) and dropout from the batch seed; linear lr decay; the run's autocast."""
    image, seed = image_spec(config), config["batch_seed"]

    def augment(x: torch.Tensor, epoch: int, positions: torch.Tensor) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(stream_seed(seed, f"crop/{epoch}/{p}")) for p in positions.tolist()]
        return image.random_resized_crop(x, gens)

    return TrainExtras(
        augment=augment, linear_decay=True, rng_seed=stream_seed(seed, "dropout"), precision=config["precision"]
    )


FAMILY = families.register(
    families.ModelFamily(
        name="vit", summary="ViT-B/16 with LoRA", archs={"vit": "vit"}, build=vit_from_config,
        train_script="finetune_vit.py", score_folder="tda_vit_scripts", arch_flag=False,
        train_flags=("--model_name_or_path", "--precision"), raw_pixels=True,
        run_config=lambda spec: vit_run_config(spec.model_name_or_path, spec.lora, spec.precision,
                                               get_task(spec.task).num_outputs),
        train_extras=vit_train_extras,
        # ViT-B/16 keeps ~100 MB of activations per 224×224 image, so its chunks are small; the original's
        # ViT code ran LiSSA in batches of 32.
        chunk=16, hvp_chunk=1, lissa_batch=32,
    )
)  # fmt: skip
