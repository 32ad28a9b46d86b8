"""Per-sample gradients kept in factored form, so that their inner products are cheap.

For a Linear layer y = W a + b applied to one vector a per sample, the gradient of any scalar
s(y) w.r.t. [W, b] is the outer product δ ⊗ [a, 1], with δ = ∂s/∂y. Two such gradients then have
the inner product (δ·δ')([a,1]·[a',1]), so no P-sized per-sample gradient is ever materialised for
those layers. On the CNNs fc1 holds 205k of the 225k parameters. Other parameters (convolutions,
LoRA on token sequences) stay dense.

The per-sample scalars are `Jᵢᵀ wᵢ` for chosen output cotangents wᵢ: the loss gradient uses w = ∂ℓ/∂f
(softmax − onehot for cross-entropy), and the Gauss–Newton factor uses the columns of L with L Lᵀ = ∂²ℓ/∂f²
(`training.losses`).
δ is obtained with torch.func by differentiating w.r.t. a zero "probe" added to each factored
layer's output, and the layer input a is returned as an auxiliary output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, vmap

from ..models.func import FunctionalModel, flatten, unflatten


@dataclass
class GradFeatures:
    """Gradients of N scalars: a dense part [N, P_dense] plus (δ [N, out], a [N, in+1]) per factored layer."""

    dense: torch.Tensor
    factors: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return self.dense.shape[0]

    def gram(self, other: GradFeatures, rows: int = 1024) -> torch.Tensor:
        """[N, M] inner products between these gradients and `other`'s.

        A factored layer's term is built `rows` rows at a time: whole, its two [N, M] temporaries would
        add 0.4 GB to the GGN's UᵀU at CIFAR10-50pc (N = M = 5000, float64).
        """
        out = self.dense @ other.dense.T
        for (d1, a1), (d2, a2) in zip(self.factors, other.factors, strict=True):
            for lo in range(0, len(out), rows):
                term = d1[lo : lo + rows] @ d2.T
                term *= a1[lo : lo + rows] @ a2.T
                out[lo : lo + rows] += term
        return out

    def sq_norms(self) -> torch.Tensor:
        out = self.dense.square().sum(1)
        for d, a in self.factors:
            out += d.square().sum(1) * a.square().sum(1)
        return out

    def rows(self, idx) -> GradFeatures:
        return GradFeatures(self.dense[idx], [(d[idx], a[idx]) for d, a in self.factors])


class GradFeaturizer:
    """Computes `GradFeatures` of a model's per-sample loss gradients or Jacobian–vector products."""

    def __init__(self, fm: FunctionalModel, example_x: torch.Tensor, factor_linear: bool = True):
        self.fm = fm
        self.factored = self._factorable_linears(fm, example_x[:1]) if factor_linear else []
        names = {n for name in self.factored for n in (f"{name}.weight", f"{name}.bias")}
        self.dense_names = [k for k in fm.params if k not in names]
        self._probes: dict[str, torch.Tensor] = {}
        self._inputs: dict[str, torch.Tensor] = {}
        modules = dict(fm.model.named_modules())
        self._hooks = [modules[name].register_forward_hook(self._hook(name)) for name in self.factored]

    @staticmethod
    def _factorable_linears(fm: FunctionalModel, example_x: torch.Tensor) -> list[str]:
        """Linear layers with trainable weight (and bias, if any) that see one vector per sample."""
        seen = {}
        modules = [
            (name, m)
            for name, m in fm.model.named_modules()
            if isinstance(m, nn.Linear)
            and f"{name}.weight" in fm.params
            and (m.bias is None or f"{name}.bias" in fm.params)
        ]
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0].dim()))
            for name, m in modules
        ]
        try:
            with torch.no_grad():
                fm.model(example_x)
        finally:
            for h in hooks:
                h.remove()
        return [name for name, _ in modules if seen.get(name) == 2]

    def _hook(self, name):
        def hook(module, inputs, output):
            if name in self._probes:
                self._inputs[name] = inputs[0]
                return output + self._probes[name]
            return None

        return hook

    def close(self):
        for h in self._hooks:
            h.remove()

    def _scalar(self, dense, probes, x, target, scalar_fn):
        """One sample's scalar, differentiable w.r.t. the dense params and the factored layers' probes."""
        self._probes, self._inputs = probes, {}
        try:
            logits = self.fm.logits({**self.fm.params, **dense}, x[None])[0]
            inputs = {name: self._inputs[name][0] for name in self.factored}
        finally:
            self._probes = {}
        return scalar_fn(logits, target), inputs

    def _features(
        self, x: torch.Tensor, targets: torch.Tensor, scalar_fn, per_sample_k: bool, chunk: int
    ) -> GradFeatures:
        dense = {k: self.fm.params[k] for k in self.dense_names}
        modules = dict(self.fm.model.named_modules())
        probes = {
            name: torch.zeros(modules[name].out_features, dtype=x.dtype, device=x.device) for name in self.factored
        }
        g = grad(self._scalar, argnums=(0, 1), has_aux=True)
        if per_sample_k:  # K targets per sample: vmap over them inside the vmap over samples
            g = vmap(g, in_dims=(None, None, None, 0, None))
        g = vmap(g, in_dims=(None, None, 0, 0, None))
        n_dense = sum(self.fm.params[k].numel() for k in self.dense_names)
        per_sample = targets.shape[1] if per_sample_k else 1
        # The dense part is the big one (the GGN's U at CIFAR10-50pc: 5000 rows × 54k conv parameters, 2 GB in
        # float64), so chunks are written into one buffer instead of concatenated from a list (two copies).
        dense_all = x.new_empty(len(x) * per_sample, n_dense)
        factor_parts = []
        for lo in range(0, len(x), chunk):
            xb, tb = x[lo : lo + chunk], targets[lo : lo + chunk]
            (g_dense, g_probe), inputs = g(dense, probes, xb, tb, scalar_fn)
            rows = len(xb) * per_sample  # sample-major: row i·K + k
            factors = []
            for name in self.factored:
                a = inputs[name]
                if modules[name].bias is not None:
                    a = torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)], -1)
                factors.append((g_probe[name].reshape(rows, -1), a.reshape(rows, -1)))
            if n_dense:
                first = lo * per_sample
                g_flat = flatten(g_dense, batch_dims=2 if per_sample_k else 1)
                dense_all[first : first + rows] = g_flat.reshape(rows, -1)
            factor_parts.append(factors)
        factors = [tuple(torch.cat([f[i][j] for f in factor_parts]) for j in (0, 1)) for i in range(len(self.factored))]
        return GradFeatures(dense_all, factors)

    def loss_grads(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 128) -> GradFeatures:
        """Per-sample loss gradients (the model's loss, `FunctionalModel.loss_fn`)."""
        loss = self.fm.loss_fn
        return self._features(x, y, lambda logits, t: loss.mean(logits[None], t[None]), False, chunk)

    def margin_grads(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 128) -> GradFeatures:
        """Per-sample gradients of TRAK's model output (the loss's `trak_output`: for cross-entropy the margin
        log p_y − log(1 − p_y))."""
        return self._features(x, y, self.fm.loss_fn.require("trak_output", "TRAK"), False, chunk)

    def jacobian_vector_grads(self, x: torch.Tensor, cotangents: torch.Tensor, chunk: int = 32) -> GradFeatures:
        """Gradients of wᵢₖ·f(xᵢ) for cotangents [N, K, C]: N·K rows, sample-major (row i·K + k)."""
        return self._features(x, cotangents, lambda logits, w: (logits * w).sum(), True, chunk)

    def dot_flat(self, vectors: torch.Tensor, feats: GradFeatures) -> torch.Tensor:
        """[K, N] inner products of flat parameter vectors [K, P] with the N gradients in `feats`.

        For a factored layer, vᵀ(δ ⊗ a) = δᵀ V a with V the layer's slice of v as an [out, in+1]
        matrix: one matrix product over all K·out rows, no per-sample gradient is materialised.
        """
        parts = unflatten(vectors, self.fm.params)  # [K, *shape] per parameter
        dense = flatten([parts[k] for k in self.dense_names], batch_dims=1) if self.dense_names else vectors[:, :0]
        out = dense @ feats.dense.T
        for name, (d, a) in zip(self.factored, feats.factors, strict=True):
            v = parts[f"{name}.weight"]  # [K, out, in]
            if f"{name}.bias" in parts:
                v = torch.cat([v, parts[f"{name}.bias"][:, :, None]], 2)
            n_out = v.shape[1]
            va = (v.reshape(-1, v.shape[2]) @ a.T).view(len(vectors), n_out, -1)  # [K, out, N]
            out += (va * d.T[None]).sum(1)
        return out


def gram_with_test(featurizer: GradFeaturizer, test, columns, block: int, chunk: int, grads=None) -> torch.Tensor:
    """[n, n_test] = `columns(g_test)` over the test points' gradient features (`grads`, default the loss
    gradients: `featurizer.loss_grads`), `block` test points at a time.

    The shared last stage of the gradient methods: the training side is transformed first (GD: as it is;
    IF: H⁻¹ applied; GGN: the Woodbury correction), and `columns` maps a block of test gradient features
    to that block's [n, block] scores (or [..., n, block]; blocks are joined on the last dimension).
    Memory stays bounded by the block, whatever n_test is.
    """
    grads = grads or featurizer.loss_grads
    cols = []
    for lo in range(0, len(test), block):
        cols.append(columns(grads(test.x[lo : lo + block], test.y[lo : lo + block], chunk)))
    return torch.cat(cols, -1)
