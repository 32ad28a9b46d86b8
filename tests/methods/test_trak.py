"""TRAK against its closed form computed densely in float64, and against the `traker` library."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import features_to_dense

from bayestda.core.errors import UserError
from bayestda.methods.features import GradFeaturizer
from bayestda.methods.trak import Projection, trak_scores
from bayestda.models.func import FunctionalModel
from bayestda.training.losses import margin

from .reference import micro_vit, toy_data, trained_tiny


def dense_projection(projection: Projection, fm: FunctionalModel, example=None) -> torch.Tensor:
    """R [P, k] assembled from its blocks, in flat parameter order."""
    example = torch.zeros(1, 1, 6, 6, dtype=next(iter(fm.params.values())).dtype) if example is None else example
    featurizer = GradFeaturizer(fm, example)
    rows = [(cols.start, r.clone()) for cols, r, _ in projection.blocks(featurizer)]  # blocks reuse one buffer
    featurizer.close()
    return torch.cat([r for _, r in sorted(rows, key=lambda t: t[0])])


def margin_grads_and_q(model, data):
    """Dense per-sample margin gradients by autograd, one sample at a time, and Q = 1 − p_y."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x, y in zip(data.x, data.y, strict=True):
        out = margin(model(x[None])[0], y)
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    with torch.no_grad():
        q = 1 - model(data.x).softmax(-1).gather(1, data.y[:, None])[:, 0]
    return torch.stack(rows), q


def closed_form(g_train, g_test, q, damping, r=None):
    """φ(z)ᵀ (ΦᵀΦ + λI)⁻¹ φ_j Q_jj with an explicit inverse (the pseudo-inverse when λ = 0)."""
    phi, phi_test = (g_train, g_test) if r is None else (g_train @ r, g_test @ r)
    gram = phi.T @ phi
    inverse = torch.linalg.pinv(gram) if damping == 0 else torch.linalg.inv(gram + damping * torch.eye(len(gram)))
    return (phi @ inverse @ phi_test.T) * q[:, None]


@pytest.fixture(scope="module")
def tiny():
    train, test = toy_data(12), toy_data(5, seed=1)
    model = trained_tiny(train, 30)
    return model.double().eval(), train, test


def test_margin_is_log_odds_of_the_true_class():
    logits = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    p = logits.softmax(-1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(margin(logits, y), (p / (1 - p)).log())


def test_margin_gradient_features_are_the_autograd_gradients(tiny):
    model, train, _ = tiny
    featurizer = GradFeaturizer(FunctionalModel(model), train.x)
    dense = features_to_dense(featurizer, featurizer.margin_grads(train.x, train.y, chunk=5))
    featurizer.close()
    torch.testing.assert_close(dense, margin_grads_and_q(model, train)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_identity_projection_equals_the_dense_closed_form(tiny, damping):
    """k = P (167) > n (12): the scores go through the n × n Gram matrix; the reference inverts the P × P one."""
    model, train, test = tiny
    got = trak_scores(FunctionalModel(model), train, test, Projection("identity", 0, 0), damping, chunk=5)
    (g_train, q), (g_test, _) = margin_grads_and_q(model, train), margin_grads_and_q(model, test)
    torch.testing.assert_close(got, closed_form(g_train, g_test, q, damping), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("kind", "k", "damping"), [("rademacher", 64, 0.0), ("gaussian", 64, 0.01),
                                                    ("rademacher", 8, 0.0), ("gaussian", 8, 0.5)])  # fmt: skip
def test_projected_scores_equal_the_dense_closed_form(tiny, kind, k, damping):
    """Both forms of the solve: k ≥ n (through ΦΦᵀ) and k < n (through ΦᵀΦ); the test side is never projected."""
    model, train, test = tiny
    fm = FunctionalModel(model)
    projection = Projection(kind, k, 3)
    got = trak_scores(fm, train, test, projection, damping, chunk=5)
    (g_train, q), (g_test, _) = margin_grads_and_q(model, train), margin_grads_and_q(model, test)
    r = dense_projection(projection, fm)
    assert r.shape == (sum(p.numel() for p in model.parameters()), k)
    torch.testing.assert_close(got, closed_form(g_train, g_test, q, damping, r), rtol=1e-6, atol=1e-9)


def test_blocks_in_reused_buffers_equal_fresh_ones():
    """Scratch buffers that grow and shrink between blocks change no bit of any block."""
    for kind in ("rademacher", "gaussian"):
        for dim in (2048, 100, 7):
            scratch, projection = {}, Projection(kind, dim, 3)
            for rows in (8192 // dim + 3, 5, 1, 300):
                for dtype in (torch.float32, torch.float64):
                    got = projection.block("x.weight", 2, rows, dtype, "cpu", scratch).clone()
                    assert torch.equal(got, projection.block("x.weight", 2, rows, dtype, "cpu")), (kind, dim, rows)
                    assert torch.equal(got, projection.block("x.weight", 2, rows, dtype, "cpu", scratch))


def test_projection_is_seeded_and_independent_of_chunks(tiny):
    model, train, test = tiny
    fm = FunctionalModel(model)
    r = dense_projection(Projection("rademacher", 16, 7), fm)
    assert torch.equal(r, dense_projection(Projection("rademacher", 16, 7), fm))
    assert not torch.equal(r, dense_projection(Projection("rademacher", 16, 8), fm))
    assert set(r.unique().tolist()) == {-0.25, 0.25}  # ±1/√k
    for dtype in (torch.float32, torch.float64):  # where 1/√k is not a power of 2 too: ±1 times 1/√k, rounded once
        block = Projection("rademacher", 2048, 0).block("w", 0, 4, dtype, "cpu")
        assert torch.equal(block, block.sign() * 2048**-0.5)
        assert (block > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    g = dense_projection(Projection("gaussian", 512, 0), fm)
    assert g.var().item() == pytest.approx(1 / 512, rel=0.05)
    a = trak_scores(fm, train, test, Projection("gaussian", 32, 1), chunk=2)
    b = trak_scores(fm, train, test, Projection("gaussian", 32, 1), chunk=64)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_large_k_approaches_exact_gradients(tiny):
    """φᵢ·φⱼ → ∇fᵢ·∇fⱼ as k grows (Johnson–Lindenstrauss), so the scores approach the identity projection's."""
    model, train, test = tiny
    fm = FunctionalModel(model)
    exact = trak_scores(fm, train, test, Projection("identity", 0, 0), 0.1)
    errors = [(trak_scores(fm, train, test, Projection("gaussian", k, 0), 0.1) - exact).norm() / exact.norm()
              for k in (32, 4096)]  # fmt: skip
    assert errors[1] < 0.3 * errors[0] and errors[1] < 0.1


def test_singular_kernel_is_one_line(tiny):
    model, train, test = tiny
    twice = type(train)(torch.cat([train.x, train.x[:1]]), torch.cat([train.y, train.y[:1]]), torch.arange(13))
    with pytest.raises(UserError, match="--damping"):
        trak_scores(FunctionalModel(model), twice, test, Projection("identity", 0, 0), 0.0)


def test_equals_traker_with_the_same_projection(tiny, tmp_path):
    """traker 0.3.2 (test-only dependency) on one model, given our R: equal up to traker's positive scale (it
    divides the features by √P and (ΦᵀΦ + λI)⁻¹ by its mean absolute entry)."""
    trak = pytest.importorskip("trak", reason="traker is a test-only dependency (req-test.txt)")
    from trak.projectors import AbstractProjector
    from trak.utils import vectorize

    model, train, test = tiny
    model = copy.deepcopy(model).float()
    fm = FunctionalModel(model)
    projection = Projection("gaussian", 4, 5)
    r = dense_projection(projection, fm)

    class Given(AbstractProjector):
        def __init__(self):
            super().__init__(seed=0, proj_dim=r.shape[1], grad_dim=r.shape[0], proj_type="normal", device="cpu")

        def project(self, grads, model_id):
            return (vectorize(grads, device="cpu") if isinstance(grads, dict) else grads) @ r

        def free_memory(self):
            pass

    for damping in (0.0, 0.05):
        traker = trak.TRAKer(model=model, task="image_classification", train_set_size=len(train),
                             save_dir=str(tmp_path / f"trak{damping}"), device="cpu", projector=Given(),
                             use_half_precision=False, lambda_reg=damping / r.shape[0],  # its features are ours / sqrt(P)
                             logging_level=40)  # fmt: skip
        traker.load_checkpoint(model.state_dict(), model_id=0)
        traker.featurize(batch=(train.x.float(), train.y), num_samples=len(train))
        traker.finalize_features()
        traker.start_scoring_checkpoint("test", model.state_dict(), model_id=0, num_targets=len(test))
        traker.score(batch=(test.x.float(), test.y), num_samples=len(test))
        theirs = torch.as_tensor(traker.finalize_scores("test")).double()
        ours = trak_scores(FunctionalModel(tiny[0]), train, test, projection, damping)  # float64: the error is traker's
        scale = (ours * theirs).sum() / theirs.square().sum()
        assert scale > 0
        assert ((ours - scale * theirs).norm() / ours.norm()).item() < 1e-5


def test_vit_lora_scores_equal_the_dense_closed_form(micro_vit_dir):
    """The ViT's trainable parameters (LoRA on token sequences: dense features, and the classifier)."""
    train, test = toy_data(6), toy_data(4, seed=1)
    model = trained_tiny(train, 20, model=micro_vit(micro_vit_dir))
    fm = FunctionalModel(model)
    projection = Projection("rademacher", 32, 2)
    got = trak_scores(fm, train, test, projection, 0.01, chunk=4)
    (g_train, q), (g_test, _) = margin_grads_and_q(model, train), margin_grads_and_q(model, test)
    expected = closed_form(g_train, g_test, q, 0.01, dense_projection(projection, fm, train.x[:1]))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
