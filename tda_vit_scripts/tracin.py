#!/usr/bin/env python
"""Step 2 (ViT + LoRA), TracInCP over each seed's whole fine-tuning run, replayed: the lr-weighted Grad-Dot at the
end of every epoch. (The per-step --kind ideal needs each step's inputs as the model saw them: not with the ViT's
random crops and dropout.)

One τ per seed, so steps 3–4 have only k = 1 for it. Writes tda_scores/<model>/tracin-cp/<task>_<n>pc/<seed>.pt;
positive means z_j helps z. The method: bayestda/methods/tracin.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "tracin", "vit"))
