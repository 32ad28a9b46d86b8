"""Influence functions: IF(z_j, z) = −∇L(z_j)ᵀ H⁻¹ ∇L(z), H the curvature of the mean training loss
(cross-entropy only: weight decay is off, as in the paper). Three solvers:

- `paper`: LiSSA exactly as in the FastIF code the paper used. With h₀ = v, it iterates
  h ← v + (1−d)·h − H_b h / s once over the training set, in file order, in batches of 8. It returns
  s_test = h/s, with d = 5e-3 and s = 1e4. Its fixed point is (H + d·s·I)⁻¹ v = (H + 50 I)⁻¹ v, but
  one pass is ~n/8 steps and far from it: s_test ≈ (steps+1)·v/s, so IF ≈ −GD·(steps+1)/s plus a
  small curvature term. `lissa_diagnostics` measures how far.
  The recursion is linear in v and each H_b is symmetric, so its transpose, applied to the training
  gradients with the batch order reversed (`lissa_transposed`), gives the same scores as the
  recursion applied to every test gradient: n instead of m recursions.
- `ggn`: the exact inverse of the damped Gauss–Newton matrix G + λI. G = U Uᵀ has rank ≤ n·C, so
  Woodbury gives (G + λI)⁻¹ = (I − U (λI + UᵀU)⁻¹ Uᵀ)/λ, which needs only an (n·C)×(n·C) solve.
- `cg`: conjugate gradients on true Hessian–vector products of the full training loss, solving
  (H + λI) x_j = ∇L(z_j) for every training sample to a relative tolerance. CG needs H + λI positive
  definite, and trained CNNs' Hessians are not: Lanczos puts their smallest eigenvalue at −0.9 to −2.9 on
  the MNIST3-10pc checkpoints and at −0.03 to −0.5 at 50pc (largest 110–160 and 12–88; REPRODUCTION.md),
  so λ = 0.01 meets negative curvature within a few steps. An unsolved system is an error (the message
  gives the Lanczos estimate). The CNN's default λ is therefore 50, the fixed point of the paper's LiSSA;
  `logreg`'s Hessian is positive semi-definite, and its default λ is the weight decay. For checks and
  small cases.
- `ekfac`: the eigenvalue-corrected K-FAC approximation of the GGN (default) or of the empirical Fisher,
  inverted in closed form layer by layer (`methods.ekfac`). The approximation the large-model libraries
  (kronfluence) use; beside `ggn` it shows what the Kronecker factorisation costs.

The damping defaults of `ggn`, `cg` and `ekfac` belong to the model family (`families.ModelFamily.if_damping`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..core.allocator import keep_freed
from ..core.errors import UserError
from ..core.options import option
from ..data.subsets import Subset
from ..models import families
from ..models.func import FunctionalModel
from . import ekfac, grad_similarity
from .features import GradFeaturizer, gram_with_test
from .linalg import (
    LISSA_FIXED_POINT_DAMPING,
    LISSA_KEEP_FREED,
    PAPER_LISSA,
    conjugate_gradient,
    lanczos_extremes,
    lissa_batches,
    lissa_transposed,
)
from .registry import HVPOptions, Method, register


def flat_test_gram(fm: FunctionalModel, left: torch.Tensor, test: Subset) -> torch.Tensor:
    """[len(left), n_test] = left @ ∇L(test)ᵀ for flat parameter vectors `left`, `4·fm.chunk` test points at a time."""
    featurizer = GradFeaturizer(fm, test.x)
    try:
        return gram_with_test(
            featurizer, test, lambda g_test: featurizer.dot_flat(left, g_test), 4 * fm.chunk, fm.chunk
        )
    finally:
        featurizer.close()


# ----------------------------------------------------------------------------- paper: LiSSA


def if_paper(fm: FunctionalModel, train: Subset, test: Subset, damping=5e-3, scale=1e4, batch_size=8, passes=1):
    """([n_train, n_test] IF, s_train, g_train) with FastIF's LiSSA, computed on the training side.

    The paper runs one pass over the training set (`passes=1`); more passes approach the fixed point.
    Returns s_train = Mᵀ g_train / scale as well, so diagnostics need not recompute it.
    """
    g_train = fm.per_sample_grads(train.x, train.y)
    s_train = lissa_transposed(fm, g_train, lissa_batches(train, batch_size) * passes, damping, scale).div_(scale)
    return -flat_test_gram(fm, s_train, test), s_train, g_train


def lissa_diagnostics(fm: FunctionalModel, train: Subset, g_train: torch.Tensor, s_train: torch.Tensor, gd: torch.Tensor,
                      scores: torch.Tensor, damping: float, scale: float, batch_size: int, n_probe: int = 8) -> dict:  # fmt: skip
    """How far the paper's one-pass LiSSA is from its own fixed point, and how close to a scaled GD."""
    steps = math.ceil(len(train) / batch_size)
    pure_damping_factor = sum((1 - damping) ** i for i in range(steps + 1)) / scale  # s_test if H were 0
    probe = torch.linspace(0, len(train) - 1, min(n_probe, len(train))).long()
    with keep_freed(LISSA_KEEP_FREED):  # a few probe vectors: memory is small, the HVPs churn as in LiSSA
        fixed, info = conjugate_gradient(
            fm.hvp_fn(train.x, train.y, width=min(len(probe), fm.hvp_chunk)),
            g_train[probe],
            damping * scale,
            tol=1e-6,
            max_iter=500,
            chunk=fm.hvp_chunk,
        )
    rel = ((s_train[probe] - fixed).norm(dim=1) / fixed.norm(dim=1)).tolist()
    ratio = (s_train[probe] * g_train[probe]).sum(1) / g_train[probe].square().sum(1)
    # least-squares fit IF ≈ −c·GD over all pairs, and how much of IF that explains
    c = -(scores * gd).sum() / gd.square().sum()
    resid = scores + c * gd
    return {
        "lissa_steps": steps,
        "steps_for_1pct_of_fixed_point_in_flat_directions": math.ceil(math.log(0.01) / math.log(1 - damping)),
        "fixed_point": f"(H + {damping * scale:g} I)^-1 v",
        "rel_distance_to_fixed_point_on_probes": rel,
        "fixed_point_cg": info,
        "s_test_over_v_along_v_on_probes": ratio.tolist(),
        "pure_damping_prediction_s_test_over_v": pure_damping_factor,
        "fit_if_equals_minus_c_times_gd": {"c": c.item(), "one_over_c": (1 / c).item(),
                                           "r2": (1 - resid.square().sum() / (scores - scores.mean()).square().sum()).item()},
    }  # fmt: skip


# ----------------------------------------------------------------------------- ggn: exact Woodbury


def if_ggn(fm: FunctionalModel, train: Subset, test: Subset, damping: float, chunk: int | None = None) -> torch.Tensor:
    """[n_train, n_test] −∇L(z_j)ᵀ (G + λI)⁻¹ ∇L(z), G the Gauss–Newton matrix of the mean training loss."""
    chunk = chunk or fm.chunk
    featurizer = GradFeaturizer(fm, train.x)
    try:
        with torch.no_grad():
            hessian_factor = fm.loss_fn.require("hessian_factor", "IF's ggn solver")
            factor = hessian_factor(fm.logits(fm.params, train.x))  # L Lᵀ = ∂²ℓ/∂f² per sample
        # U's columns: J_iᵀ L_i[:, c] / √n, so that U Uᵀ = (1/n) Σ_i J_iᵀ (∂²ℓ_i/∂f²) J_i = G
        # C rows per sample, so chunk/8 samples make a vmapped call of 1.25·chunk rows on 10 classes
        u = featurizer.jacobian_vector_grads(
            train.x, factor.transpose(1, 2) / math.sqrt(len(train)), chunk=max(1, chunk // 8)
        )
        g_train = featurizer.loss_grads(train.x, train.y, chunk)
        inner = u.gram(u)
        inner.diagonal().add_(damping)
        chol = torch.linalg.cholesky(inner)
        del inner
        u_train = u.gram(g_train)  # [nC, n]
        left = torch.cholesky_solve(u_train, chol)  # (λI + UᵀU)⁻¹ Uᵀ g_train
        # one vmapped call per test block: U (2 GB at CIFAR10-50pc) is held meanwhile
        columns = lambda g_test: -(g_train.gram(g_test) - left.T @ u.gram(g_test)) / damping  # noqa: E731
        return gram_with_test(featurizer, test, columns, block=chunk, chunk=chunk)
    finally:
        featurizer.close()


# ----------------------------------------------------------------------------- cg: true Hessian


def if_cg(fm: FunctionalModel, train: Subset, test: Subset, damping: float, tol: float = 1e-6, max_iter: int = 1000):
    """[n_train, n_test] −(H + λI)⁻¹∇L(z_j) · ∇L(z) with H the Hessian of the mean training loss.

    Raises UserError when CG does not reach `tol` for every row (negative curvature or `max_iter`).
    """
    g_train = fm.per_sample_grads(train.x, train.y)
    width = min(len(g_train), fm.hvp_chunk)
    x, info = conjugate_gradient(
        fm.hvp_fn(train.x, train.y, width), g_train, damping, tol, max_iter, width, out=g_train
    )
    del g_train  # the solutions were written over it
    start = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    lo, hi = lanczos_extremes(fm.hvp_fn(train.x, train.y), start.to(x.device))
    info["hessian_ritz_min_max"] = [lo, hi]  # 30 Lanczos steps: λ_min(H) ≤ lo, λ_max(H) ≥ hi
    if not info["converged"]:
        cause = (
            f"{info['negative_curvature_rows']} of {len(x)} rows met negative curvature"
            if info["negative_curvature_rows"]
            else f"the residual is still {info['max_rel_residual']:.2g} after {info['iterations']} iterations"
        )
        raise UserError(
            f"cg did not solve (H + {damping:g} I) x = grad L(z_j): {cause}; Lanczos puts the Hessian's smallest "
            f"eigenvalue at or below {lo:.3g} (largest {hi:.3g}). Use --damping above {max(-lo, 0):.3g} "
            f"({LISSA_FIXED_POINT_DAMPING:g} = the paper LiSSA's fixed point), a larger --max_iter, or --solver ggn"
        )
    return -flat_test_gram(fm, x, test), info


# ----------------------------------------------------------------------------- the method


@dataclass(frozen=True)
class IFOptions(HVPOptions):
    solver: str = option("paper", "how H^-1 is applied: paper (FastIF's LiSSA), ggn (exact damped Gauss-Newton "
                         "inverse), cg (conjugate gradients on true Hessian-vector products), ekfac (eigenvalue-"
                         "corrected K-FAC of the GGN or empirical Fisher)",
                         choices=("paper", "ggn", "cg", "ekfac"))  # fmt: skip
    damping: float | None = option(None, lambda: "ggn, cg, ekfac: lambda in (H + lambda I); default: the model "
                                   "family's, ggn/cg/ekfac: " + families.defaults(
                                       lambda f: "/".join(f"{f.if_damping[s]:g}" for s in ("ggn", "cg", "ekfac")))
                                   + f" (cnn's cg default {LISSA_FIXED_POINT_DAMPING:g} is the fixed point of the "
                                   "paper's LiSSA: CG needs H + lambda I positive definite)", positive=True)  # fmt: skip
    fisher: str | None = option(None, "ekfac: the curvature it approximates: ggn (the Gauss-Newton matrix that "
                                "--solver ggn inverts exactly; default) or empirical (the empirical Fisher of the "
                                "true labels, kronfluence's use_empirical_fisher)", choices=ekfac.FISHERS)  # fmt: skip
    tol: float = option(1e-6, "cg: relative residual to stop at", positive=True)
    max_iter: int = option(1000, "cg: iteration limit", minimum=1)
    lissa_batch_size: int | None = option(None, lambda: "paper: LiSSA's batch size; default: the model family's, "
                                          f"as the original: {families.defaults(lambda f: f.lissa_batch)}",
                                          minimum=1)  # fmt: skip
    dtype: str | None = option(None, "default: float32 for paper and ekfac (whose eigendecompositions are float64, "
                               "as kronfluence's), float64 otherwise", choices=("float32", "float64"))  # fmt: skip
    diagnostics: bool = option(
        True,
        "paper: skip the fixed-point diagnostics (a CG solve for 8 probe gradients, and a fit of IF to GD)",
        flag="no_diagnostics",
    )

    def resolve(self, family, on_gpu: bool) -> IFOptions:
        if self.solver == "paper" and self.damping is not None:
            raise UserError(f"--damping is for --solver ggn, cg or ekfac; the paper's LiSSA has damping "
                            f"{PAPER_LISSA['damping']:g} and scale {PAPER_LISSA['scale']:g}")  # fmt: skip
        if self.solver != "ekfac" and self.fisher is not None:
            raise UserError("--fisher is for --solver ekfac")
        paper = self.solver == "paper"
        return dataclasses.replace(
            self,
            damping=None if paper else self.damping or family.if_damping[self.solver],
            fisher=(self.fisher or ekfac.FISHERS[0]) if self.solver == "ekfac" else None,
            lissa_batch_size=self.lissa_batch_size or family.lissa_batch,
            dtype=self.dtype or ("float32" if self.solver in ("paper", "ekfac") else "float64"),
        )


def score(fm: FunctionalModel, train: Subset, test: Subset, opts: IFOptions, run_config: dict):
    if opts.solver == "ggn":
        return if_ggn(fm, train, test, opts.damping), {}
    if opts.solver == "cg":
        return if_cg(fm, train, test, opts.damping, opts.tol, opts.max_iter)
    if opts.solver == "ekfac":
        return ekfac.if_ekfac(fm, train, test, opts.damping, opts.fisher)
    d, s, b = PAPER_LISSA["damping"], PAPER_LISSA["scale"], opts.lissa_batch_size
    scores, s_train, g_train = if_paper(fm, train, test, d, s, b)
    if not opts.diagnostics:
        return scores, {}
    gd = grad_similarity.grad_dot_and_cos(fm, train, test)[0]
    return scores, lissa_diagnostics(fm, train, g_train, s_train, gd, scores, d, s, b)


METHOD = register(
    Method(
        name="if", label="IF", helps_sign=-1, options=IFOptions, score=score, variant="solver",
        removal=lambda n: -1.0 / n,  # removing z_j from the mean loss moves θ by H⁻¹∇L(z_j)/n
    )
)  # fmt: skip
