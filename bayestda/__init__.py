"""bayestda: training data attribution as a random variable over posterior samples (Nguyen et al., NeurIPS'23)."""

__version__ = "0.1.0"

from .checkpoints import load_checkpoint

__all__ = ["__version__", "load_checkpoint"]
