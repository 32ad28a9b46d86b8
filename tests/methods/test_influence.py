"""IF solvers against explicit linear algebra on a tiny model (float64)."""

import pytest
import torch
from torch.nn import functional as F

from bayestda.func import FunctionalModel
from bayestda.methods import influence

from .reference import TinyNet, explicit_ggn, explicit_hessian, per_pair_grads, toy_data, trained_tiny


@pytest.fixture(scope="module")
def setup():
    train, test = toy_data(20), toy_data(6, seed=3)
    model = trained_tiny(train, steps=200)
    g_train = torch.stack(per_pair_grads(model, train))
    g_test = torch.stack(per_pair_grads(model, test))
    return model, train, test, g_train, g_test


def explicit_if(g_train, g_test, matrix, damping):
    a = matrix + damping * torch.eye(len(matrix), dtype=matrix.dtype)
    return -g_train @ torch.linalg.solve(a, g_test.T)


def test_cg_equals_explicit_damped_hessian_solve(setup):
    model, train, test, g_train, g_test = setup
    hess = explicit_hessian(model, train)
    damping = 0.05 + max(0.0, -torch.linalg.eigvalsh(hess).min().item())  # keep H + λI positive definite
    got, info = influence.if_cg(FunctionalModel(model), train, test, damping, tol=1e-10, max_iter=500)
    assert info["converged"] and info["negative_curvature_rows"] == 0
    torch.testing.assert_close(got, explicit_if(g_train, g_test, hess, damping), rtol=1e-4, atol=1e-8)


def test_long_run_lissa_reaches_the_explicit_solve(setup):
    model, train, test, g_train, g_test = setup
    hess = explicit_hessian(model, train)
    eig = torch.linalg.eigvalsh(hess)
    target = 0.05 + max(0.0, -eig.min().item())  # the fixed point is (H + damping·scale·I)⁻¹
    scale = 2 * (eig.max().item() + target)
    got, _, _ = influence.if_paper(FunctionalModel(model), train, test, damping=target / scale, scale=scale,
                                   batch_size=len(train), passes=3000)  # fmt: skip
    torch.testing.assert_close(got, explicit_if(g_train, g_test, hess, target), rtol=1e-4, atol=1e-8)


def test_ggn_woodbury_equals_explicit_damped_ggn_solve(setup):
    model, train, test, g_train, g_test = setup
    got = influence.if_ggn(FunctionalModel(model), train, test, damping=0.01)
    torch.testing.assert_close(
        got, explicit_if(g_train, g_test, explicit_ggn(model, train), 0.01), rtol=1e-4, atol=1e-8
    )


def fastif_s_test(model, v, train, damping, scale, batch_size):
    """FastIF's compute_s_test, re-implemented plainly: one test vector, autograd double-backward HVPs."""
    params = list(model.parameters())
    h = v.clone()
    for lo in range(0, len(train), batch_size):
        loss = F.cross_entropy(model(train.x[lo : lo + batch_size]), train.y[lo : lo + batch_size])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        hvp = torch.cat([g.reshape(-1) for g in torch.autograd.grad(flat, params, grad_outputs=h)])
        h = v + (1 - damping) * h - hvp / scale
    return h / scale


def test_paper_lissa_equals_per_test_point_recursion(setup):
    model, train, test, g_train, g_test = setup  # 20 training points: batches of 8, 8, 4 (file order)
    got, _, _ = influence.if_paper(FunctionalModel(model), train, test, damping=5e-3, scale=10.0, batch_size=8)
    ref = torch.stack([-g_train @ fastif_s_test(model, g_test[t], train, 5e-3, 10.0, 8) for t in range(len(test))], 1)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_paper_lissa_diagnostics_on_the_paper_setting(setup):
    """With scale 1e4 and ~n/8 steps, s_test ≈ (steps+1)·v/scale: IF_paper is almost exactly a scaled GD."""
    model, train, test, g_train, g_test = setup
    fm = FunctionalModel(model)
    scores, s_train, _ = influence.if_paper(fm, train, test)
    diag = influence.lissa_diagnostics(fm, train, g_train, s_train, g_train @ g_test.T, scores, 5e-3, 1e4, 8)
    assert diag["lissa_steps"] == 3
    assert diag["fit_if_equals_minus_c_times_gd"]["r2"] > 0.999
    assert diag["fit_if_equals_minus_c_times_gd"]["c"] == pytest.approx(
        diag["pure_damping_prediction_s_test_over_v"], rel=0.05
    )
    assert min(diag["rel_distance_to_fixed_point_on_probes"]) > 0.5  # nowhere near (H + 50 I)⁻¹ v
    assert diag["steps_for_1pct_of_fixed_point_in_flat_directions"] == 919


def test_cg_reports_negative_curvature():
    hvp = lambda v: -v  # noqa: E731  an indefinite (negative definite) operator
    _, info = influence.conjugate_gradient(hvp, torch.ones(2, 3, dtype=torch.float64), damping=0.5)
    assert info["negative_curvature_rows"] == 2 and not info["converged"]


def test_tiny_net_size():
    assert sum(p.numel() for p in TinyNet().parameters()) == 167
