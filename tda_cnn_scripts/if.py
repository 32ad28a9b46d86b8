#!/usr/bin/env python
"""Step 2, influence functions: τ = −∇L(z_j)ᵀ H⁻¹ ∇L(z), H the curvature of the mean training loss (no weight decay).

Solvers: paper (FastIF's LiSSA: damp 5e-3, scale 1e4, one pass in batches of 8 as the original CNN code; records how far it is from its
fixed point), ggn (exact damped Gauss-Newton inverse via Woodbury), cg (conjugate gradients on true Hessian-vector
products; for checks and small cases). Writes tda_scores/<model>/if-<solver>/<task>_<n>pc/<seed>.pt;
negative means z_j helps z.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.core.cli import run
from bayestda.methods.cli import tda_main

if __name__ == "__main__":
    run(lambda: tda_main(__doc__, "if", "cnn"))
