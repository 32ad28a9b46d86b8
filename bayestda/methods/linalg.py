"""Linear algebra on Hessian-vector products: conjugate gradients, Lanczos and FastIF's LiSSA recursion.

Each takes an operator `hvp: v ↦ H v` (`func.FunctionalModel.hvp_fn`) on flat parameter vectors and never
forms a matrix, so they serve every model family and every influence solver (`methods.influence`).

- `conjugate_gradient` solves (H + λI) x = b for many right-hand sides, as independent CG runs in row
  blocks. It needs H + λI positive definite and reports rows that met negative curvature.
- `lanczos_extremes` gives the smallest and largest Ritz values of H: a negative one proves H indefinite.
- `lissa_transposed` applies the transpose of FastIF's LiSSA recursion (h ← v + (1−d)·h − H_b h / s over
  the training batches), which gives the paper's IF scores from the training side in n recursions
  instead of one per test point.
"""

from __future__ import annotations

import torch
from torch.func import vmap
from tqdm.auto import tqdm

from ..core.allocator import keep_freed
from ..data.subsets import Subset
from ..models.func import HVP_CHUNK, FunctionalModel

# Free heap memory that LiSSA and its diagnostics keep between HVPs (`allocator.keep_freed`): each HVP frees many
# small blocks, and giving them back made half of LiSSA's time page faults. Their peak memory stays well below
# the 4 GiB budget at CIFAR10-50pc; IF-cg's does not, so CG proper keeps the defaults (BENCHMARKS.md).
LISSA_KEEP_FREED = 2**30
# FastIF's LiSSA as the paper ran it: damping d, scale s, one pass, one repeat. Its fixed point is (H + d·s·I)⁻¹.
PAPER_LISSA = {"damping": 5e-3, "scale": 1e4, "passes": 1, "repeats": 1}
LISSA_FIXED_POINT_DAMPING = PAPER_LISSA["damping"] * PAPER_LISSA["scale"]  # 50


def _batched(fn, vectors: torch.Tensor, chunk: int, out: torch.Tensor) -> torch.Tensor:
    """fn (a map from a row to a row of the same shape) applied to every row of `vectors` with vmap, `chunk`
    rows at a time, written into `out`. Filling one buffer, rather than concatenating the blocks, keeps one
    copy of the result in memory instead of two."""
    for block, dest in zip(vectors.split(chunk), out.split(chunk), strict=True):
        dest.copy_(vmap(fn)(block))
    return out


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
