"""Pre-norm Transformer encoder blocks whose linear layers come from any method of the library.

One weight sample per sequence
------------------------------
A weight sample is a whole network: within one Monte Carlo sample, every token of a sequence must see
the same attention projections and FFN weights. The library's per-example schemes (``lrt``, mean-field
LRT, rank-1 ``per_row`` noise) draw independent noise per *row*; flattening the B·L tokens of a batch
into rows would hand every token its own weight draw — a different (and wrong) model. So the encoder
never uses them on token rows. Instead, in predictive mode (activations (S, B, L, n) flattened to
(S, B·L, n)):

* low-rank layers call the sampling op through ``layer.predictive(h, ctx)`` with the backend forced to
  ``factored`` (one factor draw A_s, B_s per sample, shared by all rows: y_s = (h_s B_s) A_sᵀ + b_s) —
  or ``cached``, whose draws are shared by construction;
* mean-field (BBB) layers draw W_s (S × m × n) once per sample and apply it with one batched GEMM;
* rank-1 layers draw their multiplicative vectors per (sample, sequence) and broadcast them over tokens;
* deterministic layers run once on the flattened rows; MC-dropout masks are drawn per (sample, token,
  unit), which is what dropout means (it perturbs activations, not weights).

Row-shared noise needs a single-block noise source; :class:`~model_core.models.transformer.
BayesTransformer` splits multi-block sources (merged requests) block by block, so a request's answer
never depends on what it is batched with.

Training (``forward`` in ``sample`` mode) is consistent with this: each layer's ``forward`` draws one
weight sample per call, shared by the whole minibatch; rank-1 layers draw per sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext
from model_core.layers.deterministic import DeterministicLinear
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.layers.meanfield import MeanFieldLinear
from model_core.layers.rank1 import Rank1BayesLinear
from model_core.sampling.types import Backend

__all__ = [
    "EncoderBlock",
    "FeedForward",
    "ForwardPath",
    "MultiHeadSelfAttention",
    "Path",
    "PredictivePath",
    "shared_sample_linear",
]


def shared_sample_linear(layer: nn.Module, h: Tensor, ctx: PredictiveContext, groups: int) -> Tensor:
    """S outputs of ``layer`` for (S, R, n) rows ``h`` with ONE weight draw per sample for all rows.

    ``groups`` is the number of sequences among the R rows (rows of one sequence are contiguous); only
    rank-1 layers use it (their draws are per sequence). Returns (S, R, m).
    """
    s = h.shape[0]
    if isinstance(layer, LowRankBayesLinear):
        backend = Backend.CACHED if ctx.use_cache and layer._cache is not None else Backend.FACTORED
        return layer.predictive(h, PredictiveContext(s, ctx.noise, backend))
    if isinstance(layer, MeanFieldLinear):
        w_sigma, b_sigma = layer.sigmas()
        eps = ctx.noise.shared(s, *layer.weight_mu.shape, dtype=h.dtype)
        w_t = torch.addcmul(layer.weight_mu, w_sigma, eps).transpose(1, 2)  # (S, n, m)
        if layer.bias_mu is None or b_sigma is None:
            return torch.bmm(h, w_t)
        bias = torch.addcmul(
            layer.bias_mu, b_sigma, ctx.noise.shared(s, 1, layer.out_features, dtype=h.dtype)
        )
        return torch.baddbmm(bias, h, w_t)
    if isinstance(layer, Rank1BayesLinear):
        r_sigma, s_sigma = layer._sigmas()
        n_in, n_out = layer.in_features, layer.out_features
        if ctx.noise.rows != groups:
            raise ValueError(
                f"rank-1 draws are per sequence: noise covers {ctx.noise.rows} rows, not {groups}"
            )
        sv = torch.addcmul(layer.s_mu, s_sigma, ctx.noise.per_row(s, n_in, dtype=h.dtype))  # (S, B, n)
        rv = torch.addcmul(layer.r_mu, r_sigma, ctx.noise.per_row(s, n_out, dtype=h.dtype))
        hb = h.view(s, groups, -1, n_in)
        y = nn.functional.linear(hb * sv.unsqueeze(2), layer.weight) * rv.unsqueeze(2)
        y = y if layer.bias is None else y + layer.bias
        return y.view(s, h.shape[1], n_out)
    if isinstance(layer, DeterministicLinear):
        return layer.linear(h)
    raise TypeError(f"no shared-sample predictive path for {type(layer).__name__}")


def _rank1_sequence_forward(layer: Rank1BayesLinear, x: Tensor) -> Tensor:
    """Training forward of a rank-1 layer on (B, L, n): one draw of r and s per sequence."""
    if layer.mode is Mode.MEAN:
        return layer(x)
    r_sigma, s_sigma = layer._sigmas()
    b = x.shape[0]
    sv = layer.s_mu + s_sigma * torch.randn(b, 1, layer.in_features, dtype=x.dtype, device=x.device)
    rv = layer.r_mu + r_sigma * torch.randn(b, 1, layer.out_features, dtype=x.dtype, device=x.device)
    y = nn.functional.linear(x * sv, layer.weight) * rv
    return y if layer.bias is None else y + layer.bias


class Path:
    """How the blocks run their linear layers and dropout: one sample (training) or S (predictive).

    Block code sees activations as (G, L, n) with G = B (forward) or S·B (predictive).
    """

    def linear(self, layer: nn.Module, x: Tensor) -> Tensor:
        raise NotImplementedError

    def dropout(self, x: Tensor, p: float) -> Tensor:
        raise NotImplementedError


class ForwardPath(Path):
    """``forward``: each layer's own mode (one weight sample per call, or the mean)."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode

    def linear(self, layer: nn.Module, x: Tensor) -> Tensor:
        if isinstance(layer, Rank1BayesLinear):
            return _rank1_sequence_forward(layer, x)
        return layer(x)

    def dropout(self, x: Tensor, p: float) -> Tensor:
        if p <= 0.0 or self.mode is Mode.MEAN:
            return x
        return nn.functional.dropout(x, p, training=True)


class PredictivePath(Path):
    """``predictive``: S weight samples at once, shared by all tokens of a sequence (see module doc)."""

    def __init__(self, ctx: PredictiveContext, batch: int) -> None:
        self.ctx = ctx
        self.samples = ctx.samples
        self.batch = batch

    def linear(self, layer: nn.Module, x: Tensor) -> Tensor:
        g, length, n = x.shape
        h = x.reshape(self.samples, (g // self.samples) * length, n)
        y = shared_sample_linear(layer, h, self.ctx, self.batch)
        return y.view(g, length, -1)

    def dropout(self, x: Tensor, p: float) -> Tensor:
        if p <= 0.0:
            return x
        gen = self.ctx.noise.generators[0]
        keep = torch.rand(x.shape, generator=gen, dtype=x.dtype, device=gen.device) >= p
        return x * keep / (1.0 - p)


LinearFactory = Callable[[int, int], BayesianModule]


class MultiHeadSelfAttention(BayesianModule):
    """Fused QKV projection (d -> 3d), scaled dot-product attention with a key padding mask, output d -> d.

    One fused low-rank factorisation W_qkv = A Bᵀ (A: 3d × r) costs 2r·4d parameters instead of 3·2r·2d
    for three separate ones; Q, K and V then share the rank-r input subspace spanned by B.
    """

    def __init__(self, d_model: int, n_heads: int, make_linear: LinearFactory) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_heads = d_model, n_heads
        self.qkv = make_linear(d_model, 3 * d_model)
        self.out = make_linear(d_model, d_model)

    def run(self, x: Tensor, key_mask: Tensor, path: Path) -> Tensor:
        """x (G, L, d), key_mask bool (G, L) (True = a real token) -> (G, L, d)."""
        g, length, d = x.shape
        heads = self.n_heads
        qkv = path.linear(self.qkv, x).view(g, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=key_mask[:, None, None, :]
        )
        return path.linear(self.out, attn.transpose(1, 2).reshape(g, length, d))


class FeedForward(BayesianModule):
    def __init__(self, d_model: int, d_ff: int, make_linear: LinearFactory) -> None:
        super().__init__()
        self.fc1 = make_linear(d_model, d_ff)
        self.fc2 = make_linear(d_ff, d_model)

    def run(self, x: Tensor, path: Path) -> Tensor:
        return path.linear(self.fc2, nn.functional.gelu(path.linear(self.fc1, x)))


class EncoderBlock(BayesianModule):
    """Pre-norm: x + Drop(Attn(LN(x))), then x + Drop(FFN(LN(x))). LayerNorms are point estimates."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, make_linear: LinearFactory, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadSelfAttention(d_model, n_heads, make_linear)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, make_linear)
        self.dropout = dropout

    def run(self, x: Tensor, key_mask: Tensor, path: Path) -> Tensor:
        x = x + path.dropout(self.attn.run(self.norm1(x), key_mask, path), self.dropout)
        return x + path.dropout(self.ffn.run(self.norm2(x), path), self.dropout)
