#!/usr/bin/env python
"""Step 2 (ViT + LoRA), unrolled differentiation: not supported. The ViT's fine-tuning draws random crops and
dropout at every step, which the replay does not differentiate; the script says so in one line. Use it on the
CNNs or logreg (tda_cnn_scripts/ud.py). The method: bayestda/methods/ud.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "ud", "vit"))
