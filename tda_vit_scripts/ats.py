#!/usr/bin/env python
"""Step 2 (ViT + LoRA), ATS: τ = L(z; θ') − L(z; θ), θ' = θ after one step of a fresh Adam on z_j alone.

The step moves the trainable parameters only (LoRA and classifier), with the run's lr and weight decay and the
gradient in eval mode. Writes tda_scores/<model>/ats/<task>_<n>pc/<seed>.pt; negative means z_j helps z.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "ats", "vit"))
