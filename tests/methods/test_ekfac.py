"""EK-FAC against dense computations on tiny float64 models (a CNN and a LoRA ViT), and against kronfluence."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from torch.nn import functional as F

from bayestda.core.errors import UserError
from bayestda.data.subsets import Subset
from bayestda.methods import ekfac
from bayestda.models.func import FunctionalModel
from bayestda.training.losses import cross_entropy_hessian_factor

from .reference import _unflat, flat_params, toy_data, trained_tiny


def layer_io_by_loops(model: nn.Module, layer: nn.Module, x: torch.Tensor, cotangent_rows: torch.Tensor):
    """One sample's layer inputs [T, in'] (conv patches cut out pixel by pixel) and output gradients [K, T, out]
    of `cotangent_rows` [K, C] on its logits, by autograd."""
    seen = {}

    def hook(module, inputs, output):
        output.retain_grad()
        seen["in"], seen["out"] = inputs[0], output

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x[None])[0]
    finally:
        handle.remove()
    deltas = torch.stack([torch.autograd.grad(logits, seen["out"], w, retain_graph=True)[0][0] for w in cotangent_rows])
    inp = seen["in"][0].detach()
    if isinstance(layer, nn.Conv2d):
        (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
        padded = F.pad(inp, (pw, pw, ph, ph))
        rows, cols = deltas.shape[-2:]
        a = torch.stack([padded[:, r : r + kh, c : c + kw].reshape(-1) for r in range(rows) for c in range(cols)])
        d = deltas.reshape(len(deltas), deltas.shape[1], -1).transpose(1, 2)
    else:
        a, d = inp.reshape(-1, inp.shape[-1]), deltas.reshape(len(deltas), -1, deltas.shape[-1])
    if layer.bias is not None and layer.bias.requires_grad:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
    return a, d


def pseudo_cotangents(model, x, y, kind):
    """[K, C] logit cotangents of one sample: the columns of L (L Lᵀ = ∇²CE) or p − e_y."""
    logits = model(x[None])[0].detach()
    if kind == "ggn":
        return cross_entropy_hessian_factor(logits).T
    return (logits.softmax(0) - F.one_hot(y, len(logits)).to(logits.dtype))[None]


def layer_slices(model: nn.Module, layer_name: str) -> torch.Tensor:
    """Flat parameter indices of a layer's block [out, in(+1)], row-major, the bias the last column."""
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            offsets[name] = start
            start += p.numel()
    layer = dict(model.named_modules())[layer_name]
    out = layer.weight.shape[0]
    n_in = layer.weight[0].numel()
    idx = offsets[f"{layer_name}.weight"] + torch.arange(out * n_in).view(out, n_in)
    if f"{layer_name}.bias" in offsets:
        idx = torch.cat([idx, (offsets[f"{layer_name}.bias"] + torch.arange(out))[:, None]], 1)
    return idx


def dense_pseudo_grads(model, data: Subset, kind: str) -> torch.Tensor:
    """[n, K, P] pseudo-gradients J_iᵀ w_ik from explicit per-sample Jacobians."""
    theta = flat_params(model)
    logits_of = lambda vec, x: functional_call(model, _unflat(model, vec), (x[None],))[0]  # noqa: E731
    out = []
    for x, y in zip(data.x, data.y, strict=True):
        jac = jacrev(logits_of)(theta, x)  # [C, P]
        out.append(pseudo_cotangents(model, x, y, kind) @ jac)
    return torch.stack(out)


@pytest.fixture(scope="module", params=ekfac.FISHERS)
def fitted(case, request):
    taps = ekfac.LayerTaps(FunctionalModel(case.model), case.train.x)
    yield case, request.param, ekfac.fit_ekfac(taps, case.train, request.param, chunk=7)
    taps.close()


def test_kfac_factors_equal_the_means_over_samples_and_positions(fitted):
    case, kind, curvature = fitted
    modules = dict(case.model.named_modules())
    for i, layer in enumerate(curvature.taps.layers):
        a_sum = s_sum = rows = 0
        for x, y in zip(case.train.x, case.train.y, strict=True):
            a, d = layer_io_by_loops(case.model, modules[layer.name], x, pseudo_cotangents(case.model, x, y, kind))
            a_sum, s_sum, rows = a_sum + a.T @ a, s_sum + torch.einsum("kto,ktp->op", d, d), rows + len(a)
        torch.testing.assert_close(curvature.a[i], a_sum / rows, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(curvature.s[i], s_sum / rows, rtol=1e-7, atol=1e-12)


def test_corrected_eigenvalues_are_the_curvatures_diagonal_in_the_kfac_eigenbasis(fitted):
    """Λ = diag(Qᵀ F_l Q), Q = Q_S ⊗ Q_A, F_l the layer's block of the dense curvature (1/n) Σ_ik g_ik g_ikᵀ."""
    case, kind, curvature = fitted
    g = dense_pseudo_grads(case.model, case.train, kind).flatten(0, 1)
    for i, layer in enumerate(curvature.taps.layers):
        idx = layer_slices(case.model, layer.name).reshape(-1)
        block = g[:, idx].T @ g[:, idx] / len(case.train)
        q = torch.kron(curvature.q_s[i], curvature.q_a[i])  # row-major vec(Q_Sᵀ G Q_A) = qᵀ vec(G)
        torch.testing.assert_close(curvature.eigenvalues[i].reshape(-1), (q.T @ block @ q).diagonal(), **case.tol)


@pytest.mark.parametrize("kind", ekfac.FISHERS)
def test_scores_equal_an_explicit_inverse_of_the_ekfac_matrix(case, kind):
    fm = FunctionalModel(case.model)
    got, _ = ekfac.if_ekfac(fm, case.train, case.test, damping=0.01, fisher=kind, chunk=7)
    taps = ekfac.LayerTaps(fm, case.train.x)
    curvature = ekfac.fit_ekfac(taps, case.train, kind, chunk=20)
    taps.close()
    dense = torch.zeros(case.g_train.shape[1], case.g_train.shape[1], dtype=torch.float64)
    for i, layer in enumerate(taps.layers):
        idx = layer_slices(case.model, layer.name).reshape(-1)
        q = torch.kron(curvature.q_s[i], curvature.q_a[i])
        dense[idx[:, None], idx[None, :]] = q @ torch.diag(curvature.eigenvalues[i].reshape(-1)) @ q.T
    ref = -case.g_train @ torch.linalg.solve(dense + 0.01 * torch.eye(len(dense), dtype=dense.dtype), case.g_test.T)
    torch.testing.assert_close(got, ref, **case.tol)
    inverse = curvature.inverse_hvp(case.g_test, 0.01)  # the flat-vector form: the same matrix
    torch.testing.assert_close(-case.g_train @ inverse.T, ref, **case.tol)


def test_ekfac_is_exact_where_the_kronecker_basis_diagonalises_the_curvature():
    """A linear model on one training sample: its empirical Fisher g gᵀ = (δδᵀ) ⊗ (a aᵀ) is a Kronecker
    product, so EK-FAC is the exact damped inverse."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double().eval()
    train, test = toy_data(1), toy_data(4, seed=2)
    fm = FunctionalModel(model)
    g_train, g_test = fm.per_sample_grads(train.x, train.y), fm.per_sample_grads(test.x, test.y)
    got, _ = ekfac.if_ekfac(fm, train, test, damping=0.1, fisher="empirical")
    fisher = g_train.T @ g_train
    ref = -g_train @ torch.linalg.solve(fisher + 0.1 * torch.eye(len(fisher), dtype=fisher.dtype), g_test.T)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_chunks_do_not_change_the_scores(case):
    fm = FunctionalModel(case.model)
    one, _ = ekfac.if_ekfac(fm, case.train, case.test, damping=0.01, chunk=3)
    all_at_once, _ = ekfac.if_ekfac(fm, case.train, case.test, damping=0.01, chunk=64)
    torch.testing.assert_close(one, all_at_once, **case.same_recursion)


def test_flat_vectors_and_layer_blocks_round_trip(case):
    taps = ekfac.LayerTaps(FunctionalModel(case.model), case.train.x)
    try:
        blocks = taps.to_blocks(case.g_train)
        assert torch.equal(taps.from_blocks(blocks), case.g_train)
        for layer, block in zip(taps.layers, blocks, strict=True):
            idx = layer_slices(case.model, layer.name)
            assert torch.equal(block, case.g_train[:, idx])
    finally:
        taps.close()


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(36, 3)
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.temperature


def test_parameters_outside_linear_and_conv_layers_are_refused_in_one_line():
    with pytest.raises(UserError, match="temperature lie outside them; use --solver ggn or cg"):
        ekfac.LayerTaps(FunctionalModel(Scaled().double()), toy_data(2).x)


def test_equals_kronfluence_ekfac_on_the_empirical_fisher(tmp_path):
    """kronfluence 1.0.1, strategy ekfac with use_empirical_fisher: its pairwise score is ∇L(z)ᵀ(F̂ + λI)⁻¹∇L(z_j)
    (no minus sign), its factors the same means over samples and positions."""
    kronfluence = pytest.importorskip("kronfluence", reason="kronfluence is a test-only dependency (req-test.txt)")
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

    train, test = toy_data(24), toy_data(7, seed=4)
    model = trained_tiny(train, steps=150)
    ours, _ = ekfac.if_ekfac(FunctionalModel(model), train, test, damping=1e-3, fisher="empirical")
    taps = ekfac.LayerTaps(FunctionalModel(model), train.x)
    curvature = ekfac.fit_ekfac(taps, train, "empirical", chunk=24)
    taps.close()

    f64 = torch.float64
    kf_model = kronfluence.prepare_model(copy.deepcopy(model), Classification())
    analyzer = kronfluence.Analyzer("ekfac", kf_model, Classification(), cpu=True, disable_tqdm=True,
                                    output_dir=str(tmp_path))  # fmt: skip
    factor_args = FactorArguments(
        strategy="ekfac", use_empirical_fisher=True, activation_covariance_dtype=f64, gradient_covariance_dtype=f64,
        eigendecomposition_dtype=f64, lambda_dtype=f64, per_sample_gradient_dtype=f64,
    )  # fmt: skip
    score_args = ScoreArguments(damping_factor=1e-3, per_sample_gradient_dtype=f64, precondition_dtype=f64,
                                score_dtype=f64)  # fmt: skip
    as_dataset = lambda d: list(zip(d.x, d.y, strict=True))  # noqa: E731
    analyzer.fit_all_factors("f", as_dataset(train), per_device_batch_size=8, factor_args=factor_args,
                             overwrite_output_dir=True)  # fmt: skip
    analyzer.compute_pairwise_scores("s", "f", as_dataset(test), as_dataset(train), per_device_query_batch_size=7,
                                     per_device_train_batch_size=8, score_args=score_args, overwrite_output_dir=True)  # fmt: skip
    theirs = analyzer.load_pairwise_scores("s")["all_modules"]  # [n_test, n_train]
    # the issue asks for 1e-3; in float64 both agree to rounding
    torch.testing.assert_close(ours, -theirs.T.to(f64), rtol=1e-8, atol=1e-10 * theirs.abs().max().item())
    factors = analyzer.load_all_factors("f")
    for i, layer in enumerate(taps.layers):  # the factors' spectra (eigenvectors are defined up to sign only)
        eig_a, eig_s = factors["activation_eigenvalues"][layer.name], factors["gradient_eigenvalues"][layer.name]
        torch.testing.assert_close(torch.linalg.eigvalsh(curvature.a[i]), eig_a, rtol=1e-7, atol=1e-12 * eig_a.max())
        torch.testing.assert_close(torch.linalg.eigvalsh(curvature.s[i]), eig_s, rtol=1e-7, atol=1e-12 * eig_s.max())
        lam = factors["lambda_matrix"][layer.name] / factors["num_lambda_processed"][layer.name]
        torch.testing.assert_close(curvature.eigenvalues[i], lam, rtol=1e-8, atol=1e-10 * lam.abs().max().item())
