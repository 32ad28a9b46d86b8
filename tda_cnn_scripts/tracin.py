#!/usr/bin/env python
"""Step 2, TracIn over each seed's whole run, replayed: TracInCP (--kind cp: lr-weighted Grad-Dot at the end of
every epoch) or the per-step sum (--kind ideal).

One τ per seed, so steps 3–4 have only k = 1 for it. Writes tda_scores/<model>/tracin-<kind>/<task>_<n>pc/<seed>.pt;
positive means z_j helps z. The method: bayestda/methods/tracin.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "tracin", "cnn"))
