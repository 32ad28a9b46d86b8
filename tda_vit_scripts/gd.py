#!/usr/bin/env python
"""Step 2 (ViT + LoRA), Grad-Dot: τ = ∇L(z_j)·∇L(z) on every checkpoint of each seed.

Gradients over the trainable parameters only (LoRA and classifier), eval mode (no dropout), test-time resize.
Writes tda_scores/<model>/gd/<task>_<n>pc/<seed>.pt; positive means z_j helps z.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "gd", "vit"))
