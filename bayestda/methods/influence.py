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
  definite, and trained CNNs' Hessians are not: Lanczos puts their smallest eigenvalue at −1 to −3
  (MNIST3), so λ = 0.01 meets negative curvature within a few steps. An unsolved system is an error
  (the message gives the Lanczos estimate); the command line's default λ is 50, the fixed point of the
  paper's LiSSA. It is for checks and small cases.
"""

from __future__ import annotations

import math

import torch
from torch.func import vmap
from tqdm.auto import tqdm

from ..allocator import keep_freed
from ..data import Subset
from ..errors import UserError
from ..func import HVP_CHUNK, FunctionalModel, cross_entropy_hessian_factor
from .features import GradFeaturizer

PAPER_LISSA = {"damping": 5e-3, "scale": 1e4, "batch_size": 8, "passes": 1, "repeats": 1}
GGN_DAMPING = 0.01
CG_DAMPING = PAPER_LISSA["damping"] * PAPER_LISSA["scale"]  # 50: (H + 50 I)⁻¹ is where LiSSA converges to
# Free heap memory that LiSSA and its diagnostics keep between HVPs (`allocator.keep_freed`): each HVP frees
# ≈ 0.2 GB of small blocks (MNIST3-50pc), and giving them back made half of LiSSA's time page faults. Their peak
# memory is ≥ 0.8 GiB below the 4 GiB budget at CIFAR10-50pc; IF-cg's is not, so CG proper keeps the defaults.
LISSA_KEEP_FREED = 2**30


def _batched(fn, vectors: torch.Tensor, chunk: int, out: torch.Tensor) -> torch.Tensor:
    """fn (a map from a row to a row of the same shape) applied to every row of `vectors` with vmap, `chunk`
    rows at a time, written into `out`. Filling one buffer, rather than concatenating the blocks, keeps one
    copy of the result in memory instead of two."""
    for block, dest in zip(vectors.split(chunk), out.split(chunk), strict=True):
        dest.copy_(vmap(fn)(block))
    return out


def _test_gram(fm: FunctionalModel, left: torch.Tensor, test: Subset) -> torch.Tensor:
    """[len(left), n_test] = left @ ∇L(test)ᵀ, test gradients in factored form, `4·fm.chunk` at a time."""
    featurizer = GradFeaturizer(fm, test.x)
    block, cols = 4 * fm.chunk, []
    try:
        for lo in range(0, len(test), block):
            g_test = featurizer.loss_grads(test.x[lo : lo + block], test.y[lo : lo + block], fm.chunk)
            cols.append(featurizer.dot_flat(left, g_test))
    finally:
        featurizer.close()
    return torch.cat(cols, 1)


# ----------------------------------------------------------------------------- paper: LiSSA


def lissa_batches(train: Subset, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """FastIF's DataLoader(train, batch_size=8) without shuffling: file order, a smaller last batch."""
    return list(zip(train.x.split(batch_size), train.y.split(batch_size), strict=True))


def lissa_transposed(
    fm: FunctionalModel, vectors: torch.Tensor, batches, damping: float, scale: float, chunk: int | None = None
):
    """Mᵀ v for each row v, where FastIF's recursion h ← v + A_k h (h₀ = v, A_k = (1−d)I − H_k/s) gives h_K = M v.

    M = I + A_{K−1} + A_{K−1}A_{K−2} + … + A_{K−1}⋯A₀, and each A_k is symmetric, so
    Mᵀ v = v + A_{K−1}v + A_{K−2}A_{K−1}v + …: walk the batches in reverse, w ← A_k w, and sum the w's.
    The update runs in place on three buffers the size of `vectors` (w, the HVPs, the sum): at CIFAR10-50pc
    each is 0.5 GB, and the out-of-place form held up to seven at once (BENCHMARKS.md, peak memory).
    """
    w, total, hvps = vectors.clone(), vectors.clone(), torch.empty_like(vectors)
    with keep_freed(LISSA_KEEP_FREED):
        for xb, yb in tqdm(batches[::-1], desc="LiSSA", unit="batch", leave=False):
            _batched(fm.hvp_fn(xb, yb), w, chunk or fm.hvp_chunk, out=hvps)  # batches of 8 (ViT 32): small already
            w.mul_(1 - damping).sub_(hvps.div_(scale))  # (1 − d)·w − H_k w / s, the same float ops as written out
            total += w
    return total


def if_paper(fm: FunctionalModel, train: Subset, test: Subset, damping=5e-3, scale=1e4, batch_size=8, passes=1):
    """([n_train, n_test] IF, s_train, g_train) with FastIF's LiSSA, computed on the training side.

    The paper runs one pass over the training set (`passes=1`); more passes approach the fixed point.
    Returns s_train = Mᵀ g_train / scale as well, so diagnostics need not recompute it.
    """
    g_train = fm.per_sample_grads(train.x, train.y)
    s_train = lissa_transposed(fm, g_train, lissa_batches(train, batch_size) * passes, damping, scale).div_(scale)
    return -_test_gram(fm, s_train, test), s_train, g_train


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
            factor = cross_entropy_hessian_factor(fm.logits(fm.params, train.x))  # L Lᵀ = ∇²CE per sample
        # U's columns: J_iᵀ L_i[:, c] / √n, so that U Uᵀ = (1/n) Σ_i J_iᵀ ∇²CE_i J_i = G
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
        cols = []
        for lo in range(0, len(test), chunk):  # one vmapped call per block: U (2 GB at CIFAR10-50pc) is held
            g_test = featurizer.loss_grads(test.x[lo : lo + chunk], test.y[lo : lo + chunk], chunk)
            cols.append(-(g_train.gram(g_test) - left.T @ u.gram(g_test)) / damping)
    finally:
        featurizer.close()
    return torch.cat(cols, 1)


# ----------------------------------------------------------------------------- cg: true Hessian


def conjugate_gradient(
    hvp, rhs: torch.Tensor, damping: float, tol: float = 1e-6, max_iter: int = 1000, chunk: int = HVP_CHUNK,
    out: torch.Tensor | None = None,
):  # fmt: skip
    """Solve (H + damping·I) x = b for every row b of `rhs`: independent CG runs, `chunk` rows at a time.

    A block of rows is one vmapped HVP per iteration, and its CG state (x, r, p and their temporaries,
    ~10 rows each) is all the memory CG adds, whatever len(rhs) is: all rows at once held ~10 copies of
    `rhs`, 10 GB for CIFAR10-50pc in float64 (BENCHMARKS.md, peak memory). The solutions go to `out`
    (default: a new tensor); `out=rhs` overwrites the right-hand sides, each block once it is solved.
    """
    x = torch.empty_like(rhs) if out is None else out
    infos = []
    for lo in range(0, len(rhs), chunk):
        solution, info = _cg_block(hvp, rhs[lo : lo + chunk], damping, tol, max_iter)
        x[lo : lo + chunk] = solution
        infos.append(info)
    rel_res = torch.cat([i.pop("rel_res") for i in infos])
    info = {"iterations": max(i["iterations"] for i in infos), "converged": bool((rel_res <= tol).all()),
            "max_rel_residual": rel_res.max().item(),
            "negative_curvature_rows": sum(i["negative_curvature_rows"] for i in infos), "tol": tol}  # fmt: skip
    return x, info


def _cg_block(hvp, rhs: torch.Tensor, damping: float, tol: float, max_iter: int):
    """CG for the rows of `rhs` at once, one vmapped HVP per iteration over the rows still running."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rs = r.square().sum(1)
    b_norm = rhs.norm(dim=1).clamp_min(torch.finfo(rhs.dtype).tiny)
    active = torch.ones(len(rhs), dtype=torch.bool, device=rhs.device)
    negative_curvature = torch.zeros_like(active)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        idx = active.nonzero().squeeze(1)
        ap = vmap(hvp)(p[idx]) + damping * p[idx]
        curvature = (p[idx] * ap).sum(1)
        bad = curvature <= 0
        negative_curvature[idx[bad]] = True
        alpha = torch.where(bad, torch.zeros_like(curvature), rs[idx] / curvature)
        x[idx] += alpha[:, None] * p[idx]
        r[idx] -= alpha[:, None] * ap
        rs_new = r[idx].square().sum(1)
        p[idx] = r[idx] + (rs_new / rs[idx])[:, None] * p[idx]
        rs[idx] = rs_new
        done = (rs_new.sqrt() / b_norm[idx] <= tol) | bad
        active[idx[done]] = False
        if not active.any():
            break
    return x, {
        "iterations": it,
        "negative_curvature_rows": int(negative_curvature.sum()),
        "rel_res": rs.sqrt() / b_norm,
    }


def lanczos_extremes(hvp, v0: torch.Tensor, steps: int = 30) -> tuple[float, float]:
    """Smallest and largest Ritz values of the symmetric operator `hvp` after `steps` Lanczos steps from v0.

    With full reorthogonalisation. Ritz values lie inside [λ_min, λ_max] and converge fastest at the
    ends, so a negative smallest one proves the operator indefinite.
    """
    basis = [v0 / v0.norm()]
    alphas, betas = [], []
    for _ in range(min(steps, len(v0))):
        w = hvp(basis[-1])
        alphas.append(w @ basis[-1])
        q = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan)
            w = w - q.T @ (q @ w)
        betas.append(w.norm())
        if betas[-1] <= 1e-10 * alphas[0].abs().clamp_min(1):  # the Krylov space is invariant: Ritz values exact
            break
        basis.append(w / betas[-1])
    k = len(alphas)
    off = torch.stack(betas[: k - 1]) if k > 1 else torch.zeros(0, dtype=v0.dtype, device=v0.device)
    tri = torch.diag(torch.stack(alphas)) + torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(tri)
    return ritz[0].item(), ritz[-1].item()


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
            f"({CG_DAMPING:g} = the paper LiSSA's fixed point), a larger --max_iter, or --solver ggn"
        )
    return -_test_gram(fm, x, test), info
