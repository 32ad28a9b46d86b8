"""TRAK (Park et al. 2023) on one posterior sample: a linear datamodel from random projections of gradients.

For the margin f(z; θ) = log p_y − log(1 − p_y) of each sample, let φ = Rᵀ∇f, with R a seeded [P, k] random
matrix (Rademacher or Gaussian entries of variance 1/k, so that φᵢ·φⱼ ≈ ∇fᵢ·∇fⱼ). With Φ the [n, k] training
features and Q = diag(1 − p_y) on the training side,

    τ(z_j, z) = φ(z)ᵀ (ΦᵀΦ + λI)⁻¹ φ_j · Q_jj,

positive when z_j raises z's margin (helps it). This is one TRAK-1 per checkpoint; μ over the posterior samples
is then an ensemble. (The `traker` library's ensemble averages the kernel terms and Q separately, and scales
each model's (ΦᵀΦ + λI)⁻¹ by its mean absolute entry: per model that is a positive constant.)

How it is computed, without a [P, k] matrix or a dense per-sample gradient in memory:
- R is generated in blocks, one per parameter tensor and block of its output rows, each from a generator seeded
  with (`proj_seed`, parameter name, block), so R does not depend on chunk sizes or the device (`Projection`).
  A factored layer's gradient block (`features.py`) is δ ⊗ a over those rows only.
- C = (ΦᵀΦ + λI)⁻¹ΦᵀQ is solved in float64 in the smaller of its two equal forms, Φᵀ(ΦΦᵀ + λI)⁻¹Q when k ≥ n;
  λ = 0 is then the least-norm (λ → 0) limit, which exists while ΦΦᵀ is non-singular.
- The test side never projects: τ(·, z) = (R C)ᵀ∇f(z), and R C is n parameter vectors, applied to the test
  gradients in factored form (`GradFeaturizer.dot_flat`): n·P·m operations instead of m·P·k.

`projection identity` skips R (k = P: exact gradients, the limit of large k): C then comes from the Gram
matrix of the training gradients, and the scores from their inner products with the test gradients.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..core.options import option
from ..data.subsets import Subset
from ..models.func import FunctionalModel
from .features import GradFeatures, GradFeaturizer, gram_with_test
from .registry import MemoryOptions, Method, register

PROJECTIONS = ("rademacher", "gaussian", "identity")
BLOCK = 8192  # parameters per generated block of R (rounded to whole output rows of a factored layer)


@functools.cache
def _sign_table(dtype, scale: float) -> torch.Tensor:
    """[256, 8]: the bits of each byte as ±scale (the same bits as ±1 times scale in `dtype`)."""
    return (((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(dtype) * 2 - 1).mul_(scale)


def _buffer(scratch: dict | None, key: str, numel: int, dtype) -> torch.Tensor:
    """A 1-D tensor of `numel` elements: a view of the reused buffer `scratch[key]`, or a new one without scratch."""
    if scratch is None:
        return torch.empty(numel, dtype=dtype)
    buffer = scratch.get(key)
    if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
        buffer = scratch[key] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


@dataclass(frozen=True)
class Projection:
    """The seeded random matrix R [P, k], one block of rows at a time, in the model's flat parameter order."""

    kind: str
    dim: int
    seed: int

    def block(self, name: str, index: int, rows: int, dtype, device, scratch: dict | None = None) -> torch.Tensor:
        """Rows [index·rows_per_block, ...) of the parameter `name`'s part of R, [rows, k], variance 1/k.

        With `scratch` (a dict kept across calls) the block is written into reused buffers and is valid only
        until the next call: a fresh tensor per block costs more in page faults than filling it."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode()) * 65_537 + index) % 2**63)
        scale, n = self.dim**-0.5, rows * self.dim
        if self.kind == "rademacher":  # 64 signs per random word, unpacked a byte at a time through a scaled table
            n_words = -(-n // 64)
            words = torch.randint(-(2**63), 2**63 - 1, (n_words,), generator=g, dtype=torch.int64,
                                  out=_buffer(scratch, "words", n_words, torch.int64))  # fmt: skip
            index_bytes = _buffer(scratch, "bytes", 8 * n_words, torch.int32).copy_(words.view(torch.uint8))
            signs = torch.index_select(_sign_table(dtype, scale), 0, index_bytes,
                                       out=_buffer(scratch, "signs", 64 * n_words, dtype).view(-1, 8))  # fmt: skip
            r = signs.view(-1)[:n].view(rows, self.dim)
        else:
            r = torch.randn(rows, self.dim, generator=g, dtype=torch.float32,
                            out=_buffer(scratch, "normal", n, torch.float32).view(rows, self.dim))  # fmt: skip
            r = r.to(dtype).mul_(scale)
        return r.to(device)

    def blocks(self, featurizer: GradFeaturizer, feats: GradFeatures | None = None):
        """(flat parameter slice, R block, that block of the per-sample gradients in `feats` or None) for every
        block of R, in flat parameter order. Each R block lives in a reused buffer: use it before the next one."""
        fm = featurizer.fm
        first_param = next(iter(fm.params.values()))
        factored = {  # parameter -> (factored layer, part, whether a ends with the bias's constant 1)
            f"{name}.{part}": (i, part, f"{name}.bias" in fm.params)
            for i, name in enumerate(featurizer.factored)
            for part in ("weight", "bias")
        }
        dense_offsets, offset = {}, 0
        for name in featurizer.dense_names:
            dense_offsets[name] = offset
            offset += fm.params[name].numel()
        start, scratch = 0, {}
        for name, p in fm.params.items():
            width = p[0].numel() if p.dim() > 1 else 1  # parameters per output row
            per_block = max(1, BLOCK // width)
            for b, lo in enumerate(range(0, p.shape[0], per_block)):
                hi = min(lo + per_block, p.shape[0])
                cols = slice(start + lo * width, start + hi * width)
                grads = None
                if feats is not None:
                    if name in factored:
                        i, part, has_bias = factored[name]
                        d, a = feats.factors[i]
                        a = a[:, :-1] if has_bias else a
                        grads = (d[:, lo:hi, None] * a[:, None, :]).flatten(1) if part == "weight" else d[:, lo:hi]
                    else:
                        first = dense_offsets[name] + lo * width
                        grads = feats.dense[:, first : first + (hi - lo) * width]
                r = self.block(name, b, (hi - lo) * width, first_param.dtype, first_param.device, scratch)
                yield cols, r, grads
            start += p.numel()

    def project(self, featurizer: GradFeaturizer, feats: GradFeatures) -> torch.Tensor:
        """Φ = G R: [N, k]."""
        out = feats.dense.new_zeros(len(feats), self.dim)
        for _, r, grads in self.blocks(featurizer, feats):
            out.addmm_(grads, r)
        return out

    def back_project(self, featurizer: GradFeaturizer, coef: torch.Tensor) -> torch.Tensor:
        """(R C)ᵀ for C [k, n]: n flat parameter vectors [n, P] (a transposed view of R C)."""
        total = sum(p.numel() for p in featurizer.fm.params.values())
        out = coef.new_empty(total, coef.shape[1])
        for cols, r, _ in self.blocks(featurizer):
            torch.mm(r, coef, out=out[cols])
        return out.T


def _solve(kernel: torch.Tensor, rhs: torch.Tensor, damping: float, what: str) -> torch.Tensor:
    """(kernel + λI)⁻¹ rhs in float64, kernel symmetric positive semi-definite; a one-line error when it is
    singular to float64 precision (a condition number above 1e12)."""
    k = kernel.double() + damping * torch.eye(len(kernel), dtype=torch.float64, device=kernel.device)
    eigenvalues = torch.linalg.eigvalsh(k)
    if not eigenvalues[0] > 1e-12 * eigenvalues[-1]:
        raise UserError(f"{what} + λI is singular (condition number above 1e12: training gradients that are linearly "
                        f"dependent, e.g. duplicate images); pass --damping > 0")  # fmt: skip
    return torch.linalg.solve(k, rhs.double())


def trak_scores(fm: FunctionalModel, train: Subset, test: Subset, projection: Projection, damping: float = 0.0,
                chunk: int | None = None) -> torch.Tensor:  # fmt: skip
    """[n_train, n_test] TRAK-1 scores of one model."""
    chunk = chunk or fm.chunk
    featurizer = GradFeaturizer(fm, train.x)
    try:
        g_train = featurizer.margin_grads(train.x, train.y, chunk)
        weight = fm.loss_fn.require("trak_weight", "TRAK")
        with torch.no_grad():
            q = torch.cat([weight(fm.logits(fm.params, x), y)
                           for x, y in zip(train.x.split(4 * chunk), train.y.split(4 * chunk), strict=True)])  # fmt: skip
        if projection.kind == "identity":
            coef = _solve(g_train.gram(g_train), torch.diag(q), damping, "the training gradients' Gram matrix")
            coef = coef.to(g_train.dense.dtype)  # [n, n]: scores = coefᵀ G g(z)
            columns = lambda g_test: coef.T @ g_train.gram(g_test)  # noqa: E731
        else:
            phi = projection.project(featurizer, g_train)  # [n, k]
            if projection.dim >= len(phi):
                phi64 = phi.double()
                coef = phi64.T @ _solve(phi64 @ phi64.T, torch.diag(q), damping, "ΦΦᵀ")
            else:
                coef = _solve(phi.double().T @ phi.double(), phi.T * q[None], damping, "ΦᵀΦ")
            vt = projection.back_project(featurizer, coef.to(phi.dtype))  # [n, P]
            columns = lambda g_test: featurizer.dot_flat(vt, g_test)  # noqa: E731
        return gram_with_test(featurizer, test, columns, 4 * chunk, chunk, featurizer.margin_grads)
    finally:
        featurizer.close()


@dataclass(frozen=True)
class TRAKOptions(MemoryOptions):
    proj_dim: int = option(2048, "k, the dimension of the random projection of the gradients", minimum=1)
    projection: str = option("rademacher", "entries of the projection matrix (variance 1/k): rademacher, gaussian; "
                             "identity: no projection (exact gradients, the limit of large k)",
                             choices=PROJECTIONS)  # fmt: skip
    proj_seed: int = option(0, "seed of the projection matrix (the same for every checkpoint and seed)", minimum=0)
    damping: float = option(0.0, "lambda in (Phi^T Phi + lambda I)^-1; 0 as in TRAK (with k >= n: the least-norm "
                            "limit, which needs linearly independent training gradients)", minimum=0)  # fmt: skip
    dtype: str = option("float32", "dtype of the gradients and projections (the solve is float64)",
                        choices=("float32", "float64"))  # fmt: skip


def score(fm: FunctionalModel, train: Subset, test: Subset, opts: TRAKOptions, run_config: dict):
    projection = Projection(opts.projection, opts.proj_dim, opts.proj_seed)
    return trak_scores(fm, train, test, projection, opts.damping), {}


METHOD = register(Method(name="trak", label="TRAK", helps_sign=+1, options=TRAKOptions, score=score))
