#!/usr/bin/env python
"""Step 2, unrolled differentiation: each seed's run replayed with forward-mode derivatives w.r.t. every training
point's loss weight, through every Adam step; τ = −dL(z; θ_e)/dε at the 5 checkpoint epochs, the first-order
prediction of removing z_j (LOO's sign and units).

Writes tda_scores/<model>/ud/<task>_<n>pc/<seed>.pt; positive means z_j helps z. The method: bayestda/methods/ud.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "ud", "cnn"))
