"""Grad-Dot and Grad-Cos (and the factored gradient features) against a per-pair autograd loop."""

import pytest
import torch
from helpers import build_model, features_to_dense
from torch.nn import functional as F

from bayestda.core.paths import REPO_ROOT
from bayestda.data.subsets import load_subset
from bayestda.methods.features import GradFeaturizer
from bayestda.methods.grad_similarity import grad_dot_and_cos
from bayestda.models.func import FunctionalModel
from bayestda.training.losses import cross_entropy_hessian_factor

from .reference import TinyNet, micro_vit, per_pair_grads, toy_data, trained_tiny


@pytest.fixture(scope="module")
def cnn_and_data(data_root):
    torch.manual_seed(0)
    model = build_model("cnn2", "mnist3").double().eval()
    train = load_subset("mnist3", "train", 10, data_root, REPO_ROOT)
    test = load_subset("mnist3", "test", None, data_root, REPO_ROOT)
    cast = lambda s, k: type(s)(s.x[:k].double(), s.y[:k], s.idx[:k])  # noqa: E731
    return model, cast(train, 7), cast(test, 5)


@pytest.mark.parametrize("net", ["cnn", "tiny", "vit"])
def test_gd_gc_equal_per_pair_loop(net, cnn_and_data, micro_vit_dir):
    if net == "cnn":
        model, train, test = cnn_and_data
    else:
        train, test = toy_data(6), toy_data(4, seed=1)
        model = TinyNet().double().eval() if net == "tiny" else trained_tiny(train, 20, model=micro_vit(micro_vit_dir))
    gd, gc = grad_dot_and_cos(FunctionalModel(model), train, test, chunk=3)
    g_train, g_test = per_pair_grads(model, train), per_pair_grads(model, test)
    for j in range(len(train)):
        for t in range(len(test)):
            dot = torch.dot(g_train[j], g_test[t])
            cos = F.cosine_similarity(g_train[j], g_test[t], dim=0)
            assert gd[j, t].item() == pytest.approx(dot.item(), rel=1e-5, abs=1e-12)
            assert gc[j, t].item() == pytest.approx(cos.item(), rel=1e-5, abs=1e-12)


def test_factored_features_are_the_dense_gradients(cnn_and_data):
    model, train, _ = cnn_and_data
    fm = FunctionalModel(model)
    featurizer = GradFeaturizer(fm, train.x)
    assert featurizer.factored == ["fc1", "fc2"]  # the CNN's linear layers are kept as outer products
    feats = featurizer.loss_grads(train.x, train.y, chunk=2)
    dense = fm.per_sample_grads(train.x, train.y)
    torch.testing.assert_close(features_to_dense(featurizer, feats), dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(feats.gram(feats), dense @ dense.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(feats.sq_norms(), dense.square().sum(1), rtol=1e-10, atol=1e-12)
    vectors = torch.randn(3, dense.shape[1], dtype=torch.float64)  # any flat vectors (IF's s_test)
    torch.testing.assert_close(featurizer.dot_flat(vectors, feats), vectors @ dense.T, rtol=1e-10, atol=1e-12)
    # Jacobian-vector rows: J_iᵀ w for each cotangent w, against autograd of w·f(x_i)
    w = cross_entropy_hessian_factor(fm.logits(fm.params, train.x[:2])).transpose(1, 2)
    jv = features_to_dense(featurizer, featurizer.jacobian_vector_grads(train.x[:2], w))
    for i in range(2):
        for k in range(w.shape[1]):
            model.zero_grad()
            out = (model(train.x[i : i + 1])[0] * w[i, k]).sum()
            ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, list(model.parameters()))])
            torch.testing.assert_close(jv[i * w.shape[1] + k], ref, rtol=1e-10, atol=1e-12)
    featurizer.close()


def test_linear_layers_on_sequences_stay_dense():
    """A Linear applied per token (as LoRA in a ViT) has no rank-1 per-sample gradient: keep it dense."""

    class TokenNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = torch.nn.Linear(3, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):  # x: [B, T, 3]
            return self.head(self.tok(x).mean(1))

    model = TokenNet().double().eval()
    fm = FunctionalModel(model)
    x, y = torch.randn(5, 7, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])
    featurizer = GradFeaturizer(fm, x)
    assert featurizer.factored == ["head"]
    feats = featurizer.loss_grads(x, y)
    dense = fm.per_sample_grads(x, y)
    torch.testing.assert_close(features_to_dense(featurizer, feats), dense, rtol=1e-10, atol=1e-12)
    vectors = torch.randn(2, dense.shape[1], dtype=torch.float64)
    torch.testing.assert_close(featurizer.dot_flat(vectors, feats), vectors @ dense.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["all_linear", "no_linear_factor"])
def test_features_when_everything_or_nothing_is_factored(kind):
    """An MLP has no dense part; with factoring off, Jacobian rows must keep their (sample, k) order."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.GELU(), torch.nn.Linear(4, 3)).double().eval()
    fm = FunctionalModel(model)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    featurizer = GradFeaturizer(fm, x, factor_linear=kind == "all_linear")
    assert (featurizer.factored == ["0", "2"]) == (kind == "all_linear")
    feats, dense = featurizer.loss_grads(x, y, chunk=4), fm.per_sample_grads(x, y)
    torch.testing.assert_close(features_to_dense(featurizer, feats), dense)
    vectors = torch.randn(2, dense.shape[1], dtype=torch.float64)
    torch.testing.assert_close(featurizer.dot_flat(vectors, feats), vectors @ dense.T)
    w = torch.randn(6, 2, 3, dtype=torch.float64)
    jv = features_to_dense(featurizer, featurizer.jacobian_vector_grads(x, w, chunk=4))
    for i in range(6):
        for k in range(2):
            model.zero_grad()
            out = (model(x[i : i + 1])[0] * w[i, k]).sum()
            ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, list(model.parameters()))])
            torch.testing.assert_close(jv[i * 2 + k], ref)


@pytest.mark.parametrize("cosine", [False, True])
def test_gd_gc_equal_dattri_tracin_with_unit_weight(cosine):
    """dattri 0.3.0's TracInAttributor (test-only dependency) on one checkpoint, weight 1, no projection."""
    pytest.importorskip("dattri", reason="dattri is a test-only dependency (req-test.txt)")
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask
    from torch.func import functional_call

    train, test = toy_data(7), toy_data(5, seed=1)
    model = trained_tiny(train, 20)

    def loss(params, data):
        x, y = data
        return F.cross_entropy(functional_call(model, params, (x[None],)), y[None])

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = TracInAttributor(task, weight_list=torch.ones(1), normalized_grad=cosine)
    attributor.projector_kwargs = None  # dattri projects unless this is None (its default is a 512-d projection)
    loader = lambda s: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(s.x, s.y), batch_size=3)  # noqa: E731
    theirs = attributor.attribute(loader(train), loader(test)).double()
    ours = grad_dot_and_cos(FunctionalModel(model), train, test, chunk=3)[int(cosine)]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
