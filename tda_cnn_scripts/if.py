#!/usr/bin/env python
"""Step 2, influence functions: τ = −∇L(z_j)ᵀ H⁻¹ ∇L(z), H the curvature of the mean training loss (no weight decay).

Solvers: paper (FastIF's LiSSA: damp 5e-3, scale 1e4, one pass in batches of 8; records how far it is from its
fixed point), ggn (exact damped Gauss-Newton inverse via Woodbury), cg (conjugate gradients on true Hessian-vector
products; for checks and small cases). Writes tda_scores/<model>/if-<solver>/<task>_<n>pc/<seed>.pt;
negative means z_j helps z.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the package is beside this folder

from bayestda.cli import run
from bayestda.methods.cli import tda_main
from bayestda.methods.influence import PAPER_LISSA


def options(p):
    p.add_argument("--solver", default="paper", choices=["paper", "ggn", "cg"], help="how H^-1 is applied")
    p.add_argument("--damping", type=float, default=0.01, help="lambda in (H + lambda I) for ggn and cg")
    p.add_argument("--tol", type=float, default=1e-6, help="cg: relative residual to stop at")
    p.add_argument("--max_iter", type=int, default=1000, help="cg: iteration limit")
    p.add_argument(
        "--dtype", default=None, choices=["float32", "float64"], help="default: float32 for paper, float64 otherwise"
    )
    p.add_argument(
        "--no_diagnostics", action="store_true", help="paper: skip the fixed-point diagnostics (saves ~15%%)"
    )


def method_and_options(args, p):
    if args.damping <= 0:
        p.error("--damping must be positive")
    dtype = args.dtype or ("float32" if args.solver == "paper" else "float64")
    if args.solver == "paper":
        return "if-paper", {
            "dtype": dtype,
            "diagnostics": not args.no_diagnostics,
            "lissa": PAPER_LISSA,
        }
    opts = {"dtype": dtype, "damping": args.damping}
    if args.solver == "cg":
        opts |= {"tol": args.tol, "max_iter": args.max_iter}
    return f"if-{args.solver}", opts


if __name__ == "__main__":
    run(lambda: tda_main(__doc__, options, method_and_options))
