#!/usr/bin/env python
"""Step 2, TRAK: one TRAK-1 on every checkpoint of each seed (margin gradients, seeded random projection).

Writes tda_scores/<model>/trak/<task>_<n>pc/<seed>.pt; positive means z_j helps z. μ over the posterior samples
is a TRAK ensemble. The method: bayestda/methods/trak.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "trak", "cnn"))
