"""IF solvers against explicit linear algebra on tiny models (float64): a CNN and a LoRA ViT."""

import pytest
import torch
from torch.nn import functional as F

from bayestda.core.errors import UserError
from bayestda.methods import influence
from bayestda.models.func import FunctionalModel

from .reference import (
    TinyNet,
    explicit_ggn,
    explicit_hessian,
    toy_data,
    trainable,
    trained_tiny,
)


def explicit_if(g_train, g_test, matrix, damping):
    a = matrix + damping * torch.eye(len(matrix), dtype=matrix.dtype)
    return -g_train @ torch.linalg.solve(a, g_test.T)


def test_cg_equals_explicit_damped_hessian_solve(case):
    hess = explicit_hessian(case.model, case.train)
    damping = 0.05 + max(0.0, -torch.linalg.eigvalsh(hess).min().item())  # keep H + λI positive definite
    got, info = influence.if_cg(FunctionalModel(case.model), case.train, case.test, damping, tol=1e-10, max_iter=500)
    assert info["converged"] and info["negative_curvature_rows"] == 0
    torch.testing.assert_close(got, explicit_if(case.g_train, case.g_test, hess, damping), **case.tol)


def test_long_run_lissa_reaches_the_explicit_solve(case):
    if case.net == "vit":
        pytest.skip(
            "a convergence check of the recursion itself, which the tiny CNN covers; the ViT's 3000 passes take 90 s"
        )
    hess = explicit_hessian(case.model, case.train)
    eig = torch.linalg.eigvalsh(hess)
    target = 0.05 + max(0.0, -eig.min().item())  # the fixed point is (H + damping·scale·I)⁻¹
    scale = 2 * (eig.max().item() + target)
    got, _, _ = influence.if_paper(FunctionalModel(case.model), case.train, case.test, damping=target / scale,
                                   scale=scale, batch_size=len(case.train), passes=3000)  # fmt: skip
    torch.testing.assert_close(got, explicit_if(case.g_train, case.g_test, hess, target), **case.tol)


def test_ggn_woodbury_equals_explicit_damped_ggn_solve(case):
    got = influence.if_ggn(FunctionalModel(case.model), case.train, case.test, damping=0.01)
    ref = explicit_if(case.g_train, case.g_test, explicit_ggn(case.model, case.train), 0.01)
    torch.testing.assert_close(got, ref, **case.tol)


def fastif_s_test(model, v, train, damping, scale, batch_size):
    """FastIF's compute_s_test, re-implemented plainly: one test vector, autograd double-backward HVPs."""
    params = trainable(model)
    h = v.clone()
    for lo in range(0, len(train), batch_size):
        loss = F.cross_entropy(model(train.x[lo : lo + batch_size]), train.y[lo : lo + batch_size])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        hvp = torch.cat([g.reshape(-1) for g in torch.autograd.grad(flat, params, grad_outputs=h)])
        h = v + (1 - damping) * h - hvp / scale
    return h / scale


def test_paper_lissa_equals_per_test_point_recursion(case):
    model, train = case.model, case.train  # 20 training points: batches of 8, 8, 4 (file order)
    got, _, _ = influence.if_paper(FunctionalModel(model), train, case.test, damping=5e-3, scale=10.0, batch_size=8)
    s_tests = [fastif_s_test(model, g, train, 5e-3, 10.0, 8) for g in case.g_test]
    ref = torch.stack([-case.g_train @ s for s in s_tests], 1)
    torch.testing.assert_close(got, ref, **case.same_recursion)


def test_in_place_lissa_is_the_written_out_recursion_bit_for_bit():
    """lissa_transposed updates its buffers in place (memory); in float32 it must still give the same bits as
    w ← (1 − d)·w − H_k w / s written out, with HVP chunks that do not divide the rows."""
    train = toy_data(20, dtype=torch.float32)
    fm = FunctionalModel(trained_tiny(toy_data(20), steps=50).float(), hvp_chunk=3)
    vectors = fm.per_sample_grads(train.x, train.y)
    batches = influence.lissa_batches(train, 8)
    w, ref = vectors, vectors.clone()
    for xb, yb in batches[::-1]:
        w = (1 - 5e-3) * w - torch.cat([torch.func.vmap(fm.hvp_fn(xb, yb))(b) for b in w.split(3)]) / 10.0
        ref += w
    kept = vectors.clone()
    got = influence.lissa_transposed(fm, vectors, batches, 5e-3, 10.0)
    assert torch.equal(got, ref) and torch.equal(vectors, kept)  # the input is not overwritten


def test_paper_lissa_diagnostics_on_the_paper_setting(case):
    """With scale 1e4 and ~n/8 steps, s_test ≈ (steps+1)·v/scale: IF_paper is almost exactly a scaled GD."""
    fm = FunctionalModel(case.model)
    scores, s_train, _ = influence.if_paper(fm, case.train, case.test)
    gd = case.g_train @ case.g_test.T
    diag = influence.lissa_diagnostics(fm, case.train, case.g_train, s_train, gd, scores, 5e-3, 1e4, 8)
    assert diag["lissa_steps"] == 3
    assert diag["fit_if_equals_minus_c_times_gd"]["r2"] > 0.999
    assert diag["fit_if_equals_minus_c_times_gd"]["c"] == pytest.approx(
        diag["pure_damping_prediction_s_test_over_v"], rel=0.05
    )
    assert min(diag["rel_distance_to_fixed_point_on_probes"]) > 0.5  # nowhere near (H + 50 I)⁻¹ v
    assert diag["steps_for_1pct_of_fixed_point_in_flat_directions"] == 919


def test_lanczos_extremes_bound_and_reach_the_explicit_spectrum(case):
    hess = explicit_hessian(case.model, case.train)
    eig = torch.linalg.eigvalsh(hess)
    hvp = FunctionalModel(case.model).hvp_fn(case.train.x, case.train.y)
    start = torch.randn(len(hess), generator=torch.Generator().manual_seed(0), dtype=hess.dtype)
    lo, hi = influence.lanczos_extremes(hvp, start, steps=30)
    assert eig[0] - 1e-9 <= lo <= eig[-1] and eig[0] <= hi <= eig[-1] + 1e-9  # Ritz values lie inside the spectrum
    assert hi == pytest.approx(eig[-1].item(), rel=1e-6)  # the extremes converge first
    lo, hi = influence.lanczos_extremes(lambda v: hess @ v, start, steps=len(hess))  # the whole Krylov space
    assert (lo, hi) == pytest.approx((eig[0].item(), eig[-1].item()), rel=1e-6, abs=1e-9)  # ViT: float32 softmax


def test_cg_refuses_an_indefinite_damped_hessian(case):
    """Below λ_min(H), CG meets negative curvature: no scores, and the message gives the Lanczos estimate."""
    eig = torch.linalg.eigvalsh(explicit_hessian(case.model, case.train))
    assert eig[0] < 0  # trained nets have indefinite Hessians
    fm = FunctionalModel(case.model)
    with pytest.raises(UserError, match=r"negative curvature.*smallest eigenvalue at or below -.*--damping above"):
        influence.if_cg(fm, case.train, case.test, damping=-eig[0].item() / 100, tol=1e-10, max_iter=500)
    with pytest.raises(UserError, match=r"residual is still .* after 2 iterations.*--max_iter"):
        influence.if_cg(fm, case.train, case.test, damping=1.0, tol=1e-10, max_iter=2)


def test_cg_in_row_blocks_equals_all_rows_at_once(case):
    """CG solves `chunk` right-hand sides at a time (memory); blocks that do not divide the rows give the same
    solutions, and the merged info (iterations, residual, negative curvature) covers every block."""
    fm = FunctionalModel(case.model)
    hvp, rhs = fm.hvp_fn(case.train.x, case.train.y), case.g_train
    x_all, info_all = influence.conjugate_gradient(hvp, rhs, 5.0, tol=1e-10, max_iter=500, chunk=len(rhs))
    x_blocks, info = influence.conjugate_gradient(hvp, rhs, 5.0, tol=1e-10, max_iter=500, chunk=7)  # 7 + 7 + 6
    torch.testing.assert_close(x_blocks, x_all, **case.same_recursion)
    assert info["converged"] and info["max_rel_residual"] <= 1e-10 and info["iterations"] == info_all["iterations"]
    # a negative definite operator: every row of both blocks (2 + 1) stops at once, x = 0
    _, info = influence.conjugate_gradient(lambda v: -v, torch.ones(3, 4, dtype=torch.float64), damping=0.5, chunk=2)
    assert info["negative_curvature_rows"] == 3 and not info["converged"] and info["max_rel_residual"] == 1.0


def test_hvp_over_sample_blocks_equals_the_explicit_hessian(case):
    """hvp_fn sums the HVPs of sample blocks, smaller the more vectors a call carries (`width`): any block
    size gives H v of the mean loss over all samples."""
    hess = explicit_hessian(case.model, case.train)
    vectors = torch.randn(5, len(hess), generator=torch.Generator().manual_seed(0), dtype=hess.dtype)
    for chunk, width in ((3, 16), (3, 4), (64, 5)):  # blocks of 1, of 3 (the last of 2), of all 20 samples
        hvp = FunctionalModel(case.model, chunk=chunk).hvp_fn(case.train.x, case.train.y, width=width)
        torch.testing.assert_close(torch.func.vmap(hvp)(vectors), vectors @ hess, **case.same_recursion)


def test_cg_reports_negative_curvature():
    hvp = lambda v: -v  # noqa: E731  an indefinite (negative definite) operator
    _, info = influence.conjugate_gradient(hvp, torch.ones(2, 3, dtype=torch.float64), damping=0.5)
    assert info["negative_curvature_rows"] == 2 and not info["converged"]


def test_tiny_net_size():
    assert sum(p.numel() for p in TinyNet().parameters()) == 167
