#!/usr/bin/env python
"""Step 2 (ViT + LoRA), leave-one-out: τ = L(z; θ without z_j) − L(z; θ), by re-fine-tuning.

Protocols as for the CNNs: paper (from each checkpoint, continue for the full epoch budget with z_j's loss zeroed;
compare with the checkpoint), paired (compared with the same continuation on the full data), scratch (re-fine-tune
from the seed's initialisation without z_j; compare with the full-data run at the same 5 epochs). Retrains
repeat the run's crops, dropout and lr schedule. Writes tda_scores/<model>/loo-<protocol>/<task>_<n>pc/<seed>.pt;
positive means z_j helps z.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "loo", "vit"))
