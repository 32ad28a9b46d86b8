"""How a seed becomes a posterior sample: which randomness it controls.

`de` (the paper's deep ensemble) lets the seed drive both the initialisation and the batch order.
`de-init` varies only the initialisation (batch order fixed), `de-batch` only the batch order
(initialisation fixed), so the two noise sources the paper discusses can be measured apart.

A model name is the family's base name, the posterior mode's suffix, and `-noisy<percent>` for a run on noisy
labels (`label_noise.py`): `cnn`, `cnn3-deinit`, `cnn-noisy10`, `cnn-debatch-noisy10`.
"""

from __future__ import annotations

POSTERIOR_MODES = ("de", "de-init", "de-batch")
FIXED_SEED = 0  # the seed of whichever noise source a mode holds fixed
MODEL_SUFFIX = {"de": "", "de-init": "-deinit", "de-batch": "-debatch"}


def posterior_seeds(mode: str, seed: int) -> tuple[int, int]:
    """(init_seed, batch_seed) for ensemble member `seed` under posterior `mode`."""
    if mode == "de":
        return seed, seed
    if mode == "de-init":
        return seed, FIXED_SEED
    if mode == "de-batch":
        return FIXED_SEED, seed
    raise ValueError(f"unknown posterior mode {mode!r}; choose one of {', '.join(POSTERIOR_MODES)}")


NOISY = "noisy"


def model_name(base: str, mode: str, label_noise: float = 0.0) -> str:
    """Artifact name of a model family under a posterior mode and label noise, e.g. `cnn`, `cnn3-deinit`,
    `cnn-noisy10`."""
    return base + MODEL_SUFFIX[mode] + (f"-{NOISY}{noise_percent(label_noise)}" if label_noise else "")


def noise_percent(rate: float) -> int:
    percent = round(rate * 100)
    if abs(percent - rate * 100) > 1e-9:
        raise ValueError(f"--label_noise {rate} is not a whole percent (it names the model: -{NOISY}<percent>)")
    return percent


def _split(model: str) -> tuple[str, str, float]:
    base, *suffixes = model.split("-")
    noise = 0.0
    if suffixes and suffixes[-1].startswith(NOISY) and suffixes[-1][len(NOISY) :].isdigit():
        noise = int(suffixes.pop()[len(NOISY) :]) / 100
    modes = {s.lstrip("-"): m for m, s in MODEL_SUFFIX.items()}
    if "-".join(suffixes) not in modes:
        raise ValueError(f"unknown posterior suffix in model name {model!r}")
    return base, modes["-".join(suffixes)], noise


def parse_model_name(model: str) -> tuple[str, str]:
    """`cnn3-deinit` -> ("cnn3", "de-init"): the base model family and the posterior mode (any -noisy suffix
    aside)."""
    return _split(model)[:2]


def label_noise_of(model: str) -> float:
    """`cnn-noisy10` -> 0.1; 0.0 for a model trained on clean labels."""
    return _split(model)[2]
