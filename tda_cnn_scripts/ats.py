#!/usr/bin/env python
"""Step 2, ATS: τ = L(z; θ') − L(z; θ), θ' = θ after one step of a fresh Adam on z_j alone.

The Adam step uses the checkpoint's training lr and weight decay. Writes tda_scores/<model>/ats/<task>_<n>pc/<seed>.pt;
negative means z_j helps z.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "ats", "cnn"))
