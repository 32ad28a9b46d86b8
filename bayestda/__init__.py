"""bayestda: training data attribution as a random variable over posterior samples (Nguyen et al., NeurIPS'23).

The package is layered; each layer imports only from those below it (`tests/test_layers.py`):
`core` → `data` (tasks, subsets) → `tasks` (the paper's tasks) → `training` (recipe, loss, the loop) → `models`
(families) → `artifacts` (checkpoints, score files) → `runs` (step 1, replays, retrains) → `methods` (step 2) →
`analysis` (steps 3–7) → `pipeline` (`run_experiment.py`).
"""

from .artifacts.checkpoints import load_checkpoint
from .core import __version__

__all__ = ["__version__", "load_checkpoint"]
