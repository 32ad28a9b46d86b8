"""EK-FAC: the eigenvalue-corrected Kronecker-factored curvature of a model's layers (George et al. 2018;
Grosse et al. 2023), the curvature of `if-ekfac` (`methods.influence`).

The curvature is a mean of outer products of per-sample "pseudo-gradients" g_ik = J_iᵀ w_ik (J_i the Jacobian of
sample i's logits), for one of two choices of the logit cotangents w (`FISHERS`):
- `ggn`: the columns of L_i with L_i L_iᵀ = ∂²ℓ/∂f² (k over the classes; `training.losses`). Their mean is exactly the Gauss–Newton
  matrix G that `if-ggn` inverts, the true Fisher as an expectation over y ~ p (kronfluence samples one y).
- `empirical`: w_i = ∂ℓ/∂f (p_i − e_{y_i} for cross-entropy), the loss gradient: the empirical Fisher (kronfluence's `use_empirical_fisher`).

Each layer is a weight W [out, in] (a bias is one more input, a constant 1; a conv's inputs are its unfolded
patches), so a per-sample gradient is G_ik = Σ_t δ_ikt a_itᵀ over the layer's positions t: one for a Linear on
vectors, the output pixels of a conv, the tokens of a Linear on a sequence (the ViT's LoRA). K-FAC keeps the
curvature's diagonal blocks, one per layer, and approximates each by A ⊗ S, with
    A = mean over samples and positions of a aᵀ,   S = mean over samples and positions of Σ_k δ_k δ_kᵀ
(kronfluence's normalisation). EK-FAC keeps A ⊗ S's eigenbasis, Q_S ⊗ Q_A, and replaces its eigenvalues by
the block's own diagonal in that basis, the best diagonal fit there:
    Λ[o, i] = (1/n) Σ_ik (Q_Sᵀ G_ik Q_A)[o, i]².
Then (F̂ + λI)⁻¹ v = Q_S [(Q_Sᵀ V Q_A) / (Λ + λ)] Q_Aᵀ for a layer's slice V of v, and for loss gradients G_j, G_z
    −∇L(z_j)ᵀ (F̂ + λI)⁻¹ ∇L(z) = −Σ_layers ⟨(Q_Sᵀ G_j Q_A) / (Λ + λ), Q_Sᵀ G_z Q_A⟩.

The δ's of a whole batch come from one backward pass (a vjp w.r.t. zero "probes" added to each layer's output,
batched over the K cotangents with vmap), not from per-sample gradients: samples do not interact in eval mode.
Every trainable parameter must lie in a Linear or Conv2d layer (its weight, and its bias if that is trainable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import vjp, vmap
from torch.nn import functional as F

from ..core.errors import UserError
from ..data.subsets import Subset
from ..models.func import FunctionalModel, flatten, unflatten
from ..training.losses import Loss

FISHERS = ("ggn", "empirical")


def cotangents(loss: Loss, logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """[N, K, C] logit cotangents w_ik of the pseudo-gradients J_iᵀ w_ik: a curvature's (`FISHERS`), or `loss`
    (the loss gradient itself, K = 1, as `empirical`)."""
    if kind == "ggn":
        return loss.require("hessian_factor", "EK-FAC of the GGN")(logits).transpose(1, 2)  # row k = column k of L
    if kind in ("empirical", "loss"):
        return loss.grad(logits, y)[:, None]
    raise ValueError(f"unknown curvature {kind!r}; choose from {', '.join(FISHERS)}")


@dataclass
class Layer:
    """A Linear or Conv2d layer with a trainable weight."""

    name: str
    module: nn.Module
    has_bias: bool  # the bias is trainable: the inputs get a column of ones
    out_shape: tuple[int, ...] = ()  # one sample's output: (out,) for a Linear on vectors, (T, out), (out, H, W)

    @property
    def params(self) -> list[str]:
        return [f"{self.name}.weight"] + ([f"{self.name}.bias"] if self.has_bias else [])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input batch as rows a: [N, T, in(+1)]."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            a = F.unfold(x, m.kernel_size, m.dilation, _padding(m), m.stride).transpose(1, 2)  # [N, T, C·kh·kw]
        else:
            a = x.reshape(len(x), -1, x.shape[-1])
        if self.has_bias:
            a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], -1)
        return a

    def out_grads(self, d: torch.Tensor) -> torch.Tensor:
        """Gradients w.r.t. the layer's output, [..., N, *output], as rows δ: [..., N, T, out]."""
        if isinstance(self.module, nn.Conv2d):
            return d.flatten(-2).transpose(-1, -2)
        return d.reshape(*d.shape[: d.dim() - len(self.out_shape)], -1, d.shape[-1])


def _padding(conv: nn.Conv2d):
    if conv.padding == "valid":
        return 0
    if conv.padding == "same":  # an even kernel pads one pixel more on one side, which unfold cannot
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise UserError(f"EK-FAC cannot unfold {conv}: its 'same' padding is asymmetric")
        return tuple(t // 2 for t in total)
    return conv.padding


class LayerTaps:
    """A model's layers for EK-FAC and, for a batch, their inputs a and the gradients δ of logit cotangents at
    their outputs. Layer blocks of a flat parameter vector: [out, in(+1)], the bias as the last column."""

    def __init__(self, fm: FunctionalModel, example_x: torch.Tensor):
        self.fm = fm
        self.layers = [
            Layer(name, m, f"{name}.bias" in fm.params)
            for name, m in fm.model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and f"{name}.weight" in fm.params
        ]
        covered = {p for layer in self.layers for p in layer.params}
        missing = [k for k in fm.params if k not in covered]
        if missing:
            raise UserError(f"EK-FAC covers the weights and biases of Linear and Conv2d layers, and {', '.join(missing)} "
                            "lie outside them; use --solver ggn or cg")  # fmt: skip
        for layer in self.layers:
            m = layer.module
            if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
                raise UserError(f"EK-FAC needs convolutions with groups=1 and zero padding; {layer.name} is {m}")
        self._probes: dict[str, torch.Tensor] | None = None
        self._inputs: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, list[torch.Size]] = {layer.name: [] for layer in self.layers}
        self._hooks = [layer.module.register_forward_hook(self._hook(layer.name)) for layer in self.layers]
        with torch.no_grad():
            fm.logits(fm.params, example_x[:1])
        for layer in self.layers:
            if len(self._shapes[layer.name]) != 1:
                self.close()
                raise UserError(f"EK-FAC needs each layer called once per forward; {layer.name} is called "
                                f"{len(self._shapes[layer.name])} times")  # fmt: skip
            layer.out_shape = tuple(self._shapes[layer.name][0][1:])
        self._shapes = {}

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if name in self._shapes:  # the example forward
                self._shapes[name].append(output.shape)
            if self._probes is None:
                return None
            self._inputs[name] = inputs[0]
            return output + self._probes[name]

        return hook

    def close(self):
        for h in self._hooks:
            h.remove()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, kind: str):
        """[(a [N, T, in'], δ [K, N, T, out]) per layer] for the cotangents `kind` (`cotangents`)."""

        def forward(probes):
            self._probes, self._inputs = probes, {}
            try:
                return self.fm.logits(self.fm.params, x), dict(self._inputs)
            finally:
                self._probes = None

        probes = {layer.name: x.new_zeros(len(x), *layer.out_shape) for layer in self.layers}
        logits, back, inputs = vjp(forward, probes, has_aux=True)
        deltas = vmap(back, in_dims=1)(cotangents(self.fm.loss_fn, logits.detach(), y, kind))[
            0
        ]  # {name: [K, N, *output]}
        return [(layer.inputs(inputs[layer.name]), layer.out_grads(deltas[layer.name])) for layer in self.layers]

    def to_blocks(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Flat parameter vectors [..., P] as layer blocks [..., out, in(+1)]."""
        parts = unflatten(flat, self.fm.params)
        blocks = []
        for layer in self.layers:
            w = parts[f"{layer.name}.weight"]
            w = w.reshape(*flat.shape[:-1], w.shape[flat.dim() - 1], -1)
            blocks.append(torch.cat([w, parts[f"{layer.name}.bias"][..., None]], -1) if layer.has_bias else w)
        return blocks

    def from_blocks(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of `to_blocks`: flat vectors in the model's parameter order."""
        parts = {}
        for layer, b in zip(self.layers, blocks, strict=True):
            lead = b.shape[:-2]
            w = b[..., :-1] if layer.has_bias else b
            parts[f"{layer.name}.weight"] = w.reshape(*lead, *layer.module.weight.shape)
            if layer.has_bias:
                parts[f"{layer.name}.bias"] = b[..., -1]
        return flatten([parts[k] for k in self.fm.params], batch_dims=len(blocks[0].shape) - 2)


@dataclass
class EKFAC:
    """The fitted curvature, per layer: the K-FAC factors A [in', in'] and S [out, out], their eigenvectors, and
    the corrected eigenvalues Λ [out, in']."""

    taps: LayerTaps
    kind: str
    a: list[torch.Tensor] = field(default_factory=list)
    s: list[torch.Tensor] = field(default_factory=list)
    q_a: list[torch.Tensor] = field(default_factory=list)
    q_s: list[torch.Tensor] = field(default_factory=list)
    eigenvalues: list[torch.Tensor] = field(default_factory=list)

    def rotated(self, x: torch.Tensor, y: torch.Tensor, kind: str):
        """Q_Sᵀ G_ik Q_A per layer for the batch's pseudo-gradients (`cotangents`), in the cheaper of two forms:
        a layer with one position gives (Q_Aᵀ a [N, in'], Q_Sᵀ δ [K, N, out]), whose outer products they are;
        one with many (a conv) the rotated gradients [K, N, out, in'] (summing over positions first is cheaper
        than rotating every position)."""
        for (a, d), q_a, q_s in zip(self.taps(x, y, kind), self.q_a, self.q_s, strict=True):
            if a.shape[1] == 1:
                yield a[:, 0] @ q_a, d[:, :, 0] @ q_s
            else:
                yield q_s.T @ torch.einsum("knto,nti->knoi", d, a) @ q_a

    def rotate(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Q_Sᵀ G Q_A per layer for the loss gradients of the batch: [N, out, in']."""
        return [g[0] if isinstance(g, torch.Tensor) else g[1][0, :, :, None] * g[0][:, None]
                for g in self.rotated(x, y, "loss")]  # fmt: skip

    def inverse_hvp(self, flat: torch.Tensor, damping: float) -> torch.Tensor:
        """(F̂ + λI)⁻¹ v for flat parameter vectors [N, P]."""
        blocks = []
        for v, q_a, q_s, lam in zip(self.taps.to_blocks(flat), self.q_a, self.q_s, self.eigenvalues, strict=True):
            blocks.append(q_s @ ((q_s.T @ v @ q_a) / (lam + damping)) @ q_a.T)
        return self.taps.from_blocks(blocks)


def fit_ekfac(taps: LayerTaps, train: Subset, kind: str, chunk: int) -> EKFAC:
    """EK-FAC of the curvature `kind` (`FISHERS`) over the training set, `chunk` samples at a time: one pass for
    the K-FAC factors, their eigenvectors (float64), one pass for the corrected eigenvalues."""
    curvature = EKFAC(taps, kind)
    batches = list(zip(train.x.split(chunk), train.y.split(chunk), strict=True))
    n_layers = len(taps.layers)
    a_sum, s_sum, rows = [0.0] * n_layers, [0.0] * n_layers, [0] * n_layers
    for xb, yb in batches:
        for i, (a, d) in enumerate(taps(xb, yb, kind)):
            a_sum[i] = a_sum[i] + a.flatten(0, 1).T @ a.flatten(0, 1)
            s_sum[i] = s_sum[i] + d.flatten(0, 2).T @ d.flatten(0, 2)
            rows[i] += a.shape[0] * a.shape[1]  # samples × positions
    for a, s, r in zip(a_sum, s_sum, rows, strict=True):
        curvature.a.append(a / r)
        curvature.s.append(s / r)
        curvature.q_a.append(torch.linalg.eigh(a.double())[1].to(a.dtype))
        curvature.q_s.append(torch.linalg.eigh(s.double())[1].to(s.dtype))
    lam = [0.0] * n_layers
    for xb, yb in batches:
        for i, g in enumerate(curvature.rotated(xb, yb, kind)):
            if isinstance(g, torch.Tensor):
                lam[i] = lam[i] + g.square().sum((0, 1))
            else:  # one position: Σ_k (d_k ⊗ a)² = (Σ_k d_k²) ⊗ a², no [K, N, out, in'] tensor
                a, d = g
                lam[i] = lam[i] + d.square().sum(0).T @ a.square()
    curvature.eigenvalues = [x / len(train) for x in lam]
    return curvature


def if_ekfac(fm: FunctionalModel, train: Subset, test: Subset, damping: float, fisher: str = "ggn",
             chunk: int | None = None) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """([n_train, n_test] −∇L(z_j)ᵀ (F̂ + λI)⁻¹ ∇L(z), diagnostics), F̂ the EK-FAC of the curvature `fisher`."""
    chunk = chunk or fm.chunk
    taps = LayerTaps(fm, train.x)
    try:
        # a GGN batch carries a cotangent per class: fewer samples per call bound its memory
        curvature = fit_ekfac(taps, train, fisher, max(1, chunk // 4) if fisher == "ggn" else chunk)
        # the training side, preconditioned: (Q_Sᵀ G_j Q_A) / (Λ + λ), [n, out, in'] per layer
        left = [train.x.new_empty(len(train), *lam.shape) for lam in curvature.eigenvalues]
        for lo in range(0, len(train), chunk):
            rotated = curvature.rotate(train.x[lo : lo + chunk], train.y[lo : lo + chunk])
            for dest, g, lam in zip(left, rotated, curvature.eigenvalues, strict=True):
                torch.div(g, lam + damping, out=dest[lo : lo + chunk])
        scores = train.x.new_zeros(len(train), len(test))
        for lo in range(0, len(test), chunk):
            block = scores[:, lo : lo + chunk]
            rotated = curvature.rotated(test.x[lo : lo + chunk], test.y[lo : lo + chunk], "loss")
            for pre, g in zip(left, rotated, strict=True):
                if isinstance(g, torch.Tensor):
                    block -= pre.flatten(1) @ g[0].flatten(1).T
                else:  # a test gradient d aᵀ: ⟨P_j, d aᵀ⟩ = dᵀ P_j a, without forming d aᵀ
                    a, d = g
                    pa = (pre.flatten(0, 1) @ a.T).view(*pre.shape[:2], -1)  # [n, out, block]
                    block -= (pa * d[0].T).sum(1)
    finally:
        taps.close()
    info = {
        "layers": {layer.name: list(lam.shape) for layer, lam in zip(taps.layers, curvature.eigenvalues, strict=True)},
        "eigenvalue_max": max(lam.max().item() for lam in curvature.eigenvalues),
    }
    return scores, info
