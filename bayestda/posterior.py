"""How a seed becomes a posterior sample: which randomness it controls.

`de` (the paper's deep ensemble) lets the seed drive both the initialisation and the batch order.
`de-init` varies only the initialisation (batch order fixed), `de-batch` only the batch order
(initialisation fixed), so the two noise sources the paper discusses can be measured apart.
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


def model_name(base: str, mode: str) -> str:
    """Artifact name of a model family under a posterior mode, e.g. `cnn` or `cnn3-deinit`."""
    return base + MODEL_SUFFIX[mode]


def parse_model_name(model: str) -> tuple[str, str]:
    """`cnn3-deinit` -> ("cnn3", "de-init"): the base model family and the posterior mode."""
    base, _, suffix = model.partition("-")
    modes = {s.lstrip("-"): m for m, s in MODEL_SUFFIX.items()}
    if suffix not in modes:
        raise ValueError(f"unknown posterior suffix in model name {model!r}")
    return base, modes[suffix]
