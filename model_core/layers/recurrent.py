"""Bayesian LSTM layers whose weights are drawn ONCE per sequence and reused at every time step.

A Bayesian RNN has one set of weights per posterior sample, shared by all time steps of a sequence
(Fortunato et al. 2017, "Bayesian recurrent neural networks"). So:

* ``sample`` mode (training) draws every gate matrix once per forward call -- one draw per minibatch of
  sequences -- and applies that draw at all T steps; ``mean`` mode uses the posterior means.
* ``predictive(x, ctx)`` draws S weight samples once per call and applies them with the (S, N, ·) layout
  at every step: for low-rank layers S factor draws (:func:`draw_factor_samples`, the packed layout of
  the ``cached`` backend) applied by :func:`apply_factors` -- one batched GEMM pair per step, no Python
  loop over samples (the loop runs over the T time steps only).

Why not the per-example local reparameterisation schemes (``lrt``, ``lrt-a``, ``triton``) of
:mod:`model_core.sampling`: they draw the *pre-activation* (or the first-stage product x B) afresh from
its Gaussian marginal on every call. Called once per time step, they would give each step an
independent weight sample -- a different network at every hour, with the noise averaging out over the
sequence and far too little epistemic uncertainty. The same holds for the mean-field layer's LRT
``predictive``. Every gate matrix here therefore samples weights (factors), never pre-activations.
The non-recurrent output head is applied once per sequence, so it keeps its own ``predictive``.

Per-example noise (rank-1 multiplicative vectors, MC-dropout masks) is drawn once per sequence and
sample as well and reused at every step (for dropout that is the variational RNN dropout of Gal &
Ghahramani 2016).

Gate layout: one input-to-hidden linear (n -> 4H, with the bias) and one hidden-to-hidden linear
(H -> 4H, no bias) per layer, gates ordered (input, forget, cell, output) as in ``torch.nn.LSTM``; the
forget-gate bias mean starts at 1.
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
from model_core.sampling.cache import packed_b_flat
from model_core.sampling.cpu import apply_factors, draw_factor_samples
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import FactorSamples

#: x -> y with the weights of one draw fixed; ``seq`` says whether x has a time axis before features.
WeightOp = Callable[[Tensor, bool], Tensor]
#: (x_t, h) -> gate pre-activations for S draws.
GateOp = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "BayesLSTMLayer",
    "PredictiveDraw",
    "WeightOp",
    "draw_dense_weight",
    "draw_predictive_op",
    "draw_sample_op",
    "forget_bias_init",
    "fused_lowrank_gates",
    "fused_lstm",
    "lstm_cell",
    "lstm_cell_",
    "lstm_scan",
]


def _over_time(fn: Callable[[Tensor], Tensor], x: Tensor, seq: bool) -> Tensor:
    """Apply a rows-shared map to (…, N, T, n) by folding T into the rows ((N·T, n) or (S, N·T, n))."""
    if not seq:
        return fn(x)
    *lead, n_rows, steps, width = x.shape
    y = fn(x.reshape(*lead, n_rows * steps, width))
    return y.reshape(*y.shape[:-2], n_rows, steps, y.shape[-1])


def draw_sample_op(layer: BayesianModule) -> WeightOp:
    """One weight draw of ``layer`` (posterior mean in ``mean`` mode), fixed for every call of the op.

    Inputs are (N, n) or (N, T, n); per-example draws (rank-1) are one per sequence.
    """
    mean = layer.mode is Mode.MEAN
    if isinstance(layer, DeterministicLinear):
        return lambda x, seq: layer.linear(x)
    if isinstance(layer, LowRankBayesLinear):
        post = layer.posterior()
        if mean:
            w = layer.mean_weight()
            return lambda x, seq: nn.functional.linear(x, w, post.bias_mu)
        a = post.mu_a + post.sigma_a * torch.randn_like(post.mu_a)
        b = post.mu_b + post.sigma_b * torch.randn_like(post.mu_b)
        bias = None
        if post.bias_mu is not None and post.bias_sigma is not None:
            bias = post.bias_mu + post.bias_sigma * torch.randn_like(post.bias_mu)
        return lambda x, seq: nn.functional.linear(x @ b, a, bias)
    if isinstance(layer, MeanFieldLinear):
        if mean:
            return lambda x, seq: nn.functional.linear(x, layer.weight_mu, layer.bias_mu)
        w_sigma, b_sigma = layer.sigmas()
        w = layer.weight_mu + w_sigma * torch.randn_like(w_sigma)
        bias = None
        if layer.bias_mu is not None and b_sigma is not None:
            bias = layer.bias_mu + b_sigma * torch.randn_like(b_sigma)
        return lambda x, seq: nn.functional.linear(x, w, bias)
    if isinstance(layer, Rank1BayesLinear):
        return _rank1_sample_op(layer, mean)
    raise TypeError(f"no recurrent sampling rule for {type(layer).__name__}")


def draw_dense_weight(layer: BayesianModule) -> tuple[Tensor, Tensor | None] | None:
    """One draw of ``layer`` as a dense (W, b) (posterior mean in ``mean`` mode); None for rank-1.

    Rank-1 layers draw per-sequence multiplicative vectors, which no single dense matrix expresses. The
    random numbers are drawn in the same order as :func:`draw_sample_op`'s, so both give the same draw.
    """
    mean = layer.mode is Mode.MEAN
    if isinstance(layer, DeterministicLinear):
        return layer.linear.weight, layer.linear.bias
    if isinstance(layer, LowRankBayesLinear):
        post = layer.posterior()
        if mean:
            return layer.mean_weight(), post.bias_mu
        a = post.mu_a + post.sigma_a * torch.randn_like(post.mu_a)
        b = post.mu_b + post.sigma_b * torch.randn_like(post.mu_b)
        bias = None
        if post.bias_mu is not None and post.bias_sigma is not None:
            bias = post.bias_mu + post.bias_sigma * torch.randn_like(post.bias_mu)
        return a @ b.T, bias
    if isinstance(layer, MeanFieldLinear):
        if mean:
            return layer.weight_mu, layer.bias_mu
        w_sigma, b_sigma = layer.sigmas()
        w = layer.weight_mu + w_sigma * torch.randn_like(w_sigma)
        bias = None
        if layer.bias_mu is not None and b_sigma is not None:
            bias = layer.bias_mu + b_sigma * torch.randn_like(b_sigma)
        return w, bias
    return None


def fused_lstm(x: Tensor, ih: tuple[Tensor, Tensor | None], hh: tuple[Tensor, Tensor | None]) -> Tensor:
    """(N, T, n) -> (N, T, H) with ATen's fused LSTM (``torch.lstm``, what ``nn.LSTM`` runs) on one draw.

    The time loop runs in C++ with autograd through the drawn weights: about half the time of
    :func:`lstm_scan`'s Python loop for a training step (forward + backward) at N = 128, T = 24, H = 64.
    """
    w_ih, b_ih = ih
    w_hh, b_hh = hh
    hidden = w_hh.shape[1]
    zero_b = w_ih.new_zeros(w_ih.shape[0])
    h0 = x.new_zeros((1, x.shape[0], hidden))
    params = [w_ih, w_hh, zero_b if b_ih is None else b_ih, zero_b if b_hh is None else b_hh]
    out, _, _ = torch.lstm(x, (h0, h0), params, True, 1, 0.0, False, False, True)
    return out


def _rank1_sample_op(layer: Rank1BayesLinear, mean: bool) -> WeightOp:
    drawn: dict[str, Tensor] = {}

    def op(x: Tensor, seq: bool) -> Tensor:
        n_rows = x.shape[0]
        s: Tensor
        r: Tensor
        if mean:
            s, r = layer.s_mu, layer.r_mu
        else:
            if "s" not in drawn:  # drawn on first use (the batch size is known then), then reused
                r_sigma, s_sigma = layer._sigmas()
                eps_s = torch.randn(n_rows, layer.in_features, dtype=x.dtype, device=x.device)
                eps_r = torch.randn(n_rows, layer.out_features, dtype=x.dtype, device=x.device)
                drawn["s"] = layer.s_mu + s_sigma * eps_s
                drawn["r"] = layer.r_mu + r_sigma * eps_r
            s, r = drawn["s"], drawn["r"]
            if seq:
                s, r = s.unsqueeze(1), r.unsqueeze(1)
        y = nn.functional.linear(x * s, layer.weight) * r
        return y if layer.bias is None else y + layer.bias

    return op


class PredictiveDraw:
    """S weight draws of one layer, made once; ``bind(noise)`` adds the per-example draws of a row chunk.

    Ops take x of shape (N, [T,] n) (shared by the samples) or (S, N, [T,] n) and return (S, N, [T,] m).
    """

    def __init__(self, layer: BayesianModule, ctx: PredictiveContext) -> None:
        self.layer, self.samples = layer, ctx.samples
        self._shared: WeightOp | None = None
        #: The S factor draws of a low-rank layer (for :func:`fused_lowrank_gates`), else None.
        self.factors: FactorSamples | None = None
        s = ctx.samples
        if isinstance(layer, DeterministicLinear):

            def det(x: Tensor, seq: bool) -> Tensor:
                y = layer.linear(x)
                lead = 3 if seq else 2
                return y.unsqueeze(0).expand(s, *y.shape) if y.dim() == lead else y

            self._shared = det
        elif isinstance(layer, LowRankBayesLinear):
            cache = layer._cache if ctx.use_cache else None
            if cache is not None and cache.samples < s:
                raise ValueError(f"{s} samples requested but only {cache.samples} are cached")
            draws = cache if cache is not None else draw_factor_samples(layer.posterior(), s, ctx.noise)
            self.factors = draws
            self._shared = lambda x, seq: _over_time(lambda z: apply_factors(z, draws, s), x, seq)
        elif isinstance(layer, MeanFieldLinear):
            w_sigma, b_sigma = layer.sigmas()
            eps = ctx.noise.shared(s, *layer.weight_mu.shape, dtype=w_sigma.dtype)
            w_t = torch.addcmul(layer.weight_mu, w_sigma, eps).transpose(1, 2)  # (S, n, m)
            bias = None
            if layer.bias_mu is not None and b_sigma is not None:
                b_eps = ctx.noise.shared(s, 1, layer.out_features, dtype=w_sigma.dtype)
                bias = torch.addcmul(layer.bias_mu, b_sigma, b_eps)  # (S, 1, m)

            def mf(z: Tensor) -> Tensor:
                y = torch.matmul(z, w_t)  # (N, n) or (S, N, n) -> (S, N, m)
                return y if bias is None else y + bias

            self._shared = lambda x, seq: _over_time(mf, x, seq)
        elif not isinstance(layer, Rank1BayesLinear):
            raise TypeError(f"no recurrent sampling rule for {type(layer).__name__}")

    def bind(self, noise: NoiseSource) -> WeightOp:
        """The op for a chunk of rows whose per-example noise comes from ``noise``."""
        if self._shared is not None:
            return self._shared
        layer = self.layer
        assert isinstance(layer, Rank1BayesLinear)
        r_sigma, s_sigma = layer._sigmas()
        s_vec = torch.addcmul(layer.s_mu, s_sigma, noise.per_row(self.samples, layer.in_features))
        r_vec = torch.addcmul(layer.r_mu, r_sigma, noise.per_row(self.samples, layer.out_features))

        def op(x: Tensor, seq: bool) -> Tensor:
            s, r = (s_vec.unsqueeze(2), r_vec.unsqueeze(2)) if seq else (s_vec, r_vec)
            y = nn.functional.linear(x * s, layer.weight) * r
            return y if layer.bias is None else y + layer.bias

        return op


def fused_lowrank_gates(ih: FactorSamples, hh: FactorSamples, samples: int) -> GateOp:
    """gates(x_t, h) = x_t B_ih A_ihᵀ + b + h B_hh A_hhᵀ for S factor draws, as ONE batched GEMM per step.

    [x_t B_ih, h B_hh, 1] (S, N, r_ih + r_hh + 1) times [A_ihᵀ; A_hhᵀ; b] (S, r_ih + r_hh + 1, 4H), the
    stacked matrix built once per call: the S·N·4H gate tensor is written once, with no separate sum of
    the two projections. Exactly the same function as ``ih(x_t) + hh(h)``.
    """
    s = samples
    r1, r2 = int(ih.a.shape[2]), int(hh.a.shape[2])
    parts = [ih.a[:s].transpose(1, 2), hh.a[:s].transpose(1, 2)]
    if ih.bias is not None:
        parts.append(ih.bias[:s])
    if hh.bias is not None:
        parts.append(hh.bias[:s])
    stacked = torch.cat(parts, dim=1)  # (S, r1 + r2 [+ 1 or 2], 4H)
    ones = stacked.shape[1] - r1 - r2
    b_ih = packed_b_flat(ih, s)  # (n, S·r1) when packed: x B_s for every s in one GEMM
    b_hh = hh.b[:s]

    def gates(x: Tensor, h: Tensor) -> Tensor:
        n_rows = h.shape[1]
        buf = h.new_empty((s, n_rows, r1 + r2 + ones))
        if x.dim() == 2 and b_ih is not None:
            buf[..., :r1].copy_((x @ b_ih).view(n_rows, s, r1).transpose(0, 1))
        else:
            buf[..., :r1].copy_(torch.matmul(x, ih.b[:s]))
        buf[..., r1 : r1 + r2].copy_(torch.bmm(h, b_hh))
        if ones:
            buf[..., r1 + r2 :].fill_(1.0)
        return torch.bmm(buf, stacked)

    return gates


def draw_predictive_op(layer: BayesianModule, ctx: PredictiveContext) -> WeightOp:
    """S draws of ``layer`` made once (per-example draws from ``ctx.noise``'s rows)."""
    return PredictiveDraw(layer, ctx).bind(ctx.noise)


def lstm_scan(gates_x: Tensor, hh: WeightOp, hidden: int, mask: Tensor | None = None) -> Tensor:
    """Run the LSTM recurrence over precomputed input gates (…, N, T, 4H) -> hidden states (…, N, T, H).

    ``hh`` is the hidden-to-hidden op of ONE weight draw (or S draws, with a leading S axis), applied at
    every step. ``mask`` (…, N, H), if given, multiplies the recurrent input h at every step.
    """
    steps = gates_x.shape[-2]
    lead = gates_x.shape[:-2]
    h = gates_x.new_zeros((*lead, hidden))
    c = gates_x.new_zeros((*lead, hidden))
    outs = []
    for t in range(steps):
        h, c = lstm_cell(gates_x[..., t, :] + hh(h if mask is None else h * mask, False), c)
        outs.append(h)
    return torch.stack(outs, dim=-2)


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update from the summed gate pre-activations (…, 4H) (order i, f, g, o): (h, c)."""
    i, f, cell, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cell)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_cell_(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`lstm_cell` for prediction (no autograd): overwrites ``gates`` and ``c``, fewer temporaries."""
    hidden = gates.shape[-1] // 4
    cell = _fast_tanh(gates[..., 2 * hidden : 3 * hidden])
    i, f, _, o = gates.sigmoid_().chunk(4, dim=-1)  # one contiguous pass (the g slice is unused)
    c.mul_(f).addcmul_(i, cell)
    return _fast_tanh(c).mul_(o), c


def _fast_tanh(x: Tensor) -> Tensor:
    """tanh(x) = 2σ(2x) − 1 (absolute error ~1e-7): several times faster than torch.tanh on this CPU."""
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


def forget_bias_init(layer: BayesianModule, hidden: int, value: float = 1.0) -> None:
    """Set the forget-gate slice of the layer's bias mean to ``value`` (gate order i, f, g, o)."""
    bias: Tensor | None
    if isinstance(layer, DeterministicLinear):
        bias = layer.linear.bias
    elif isinstance(layer, (LowRankBayesLinear, MeanFieldLinear)):
        bias = layer.bias_mu
    elif isinstance(layer, Rank1BayesLinear):
        bias = layer.bias
    else:
        bias = None
    if bias is not None:
        with torch.no_grad():
            bias[hidden : 2 * hidden].fill_(value)


class BayesLSTMLayer(BayesianModule):
    """One LSTM layer: ``ih`` (n -> 4H, biased) and ``hh`` (H -> 4H) built by ``make_linear``."""

    def __init__(self, ih: BayesianModule, hh: BayesianModule, hidden: int) -> None:
        super().__init__()
        self.ih, self.hh, self.hidden = ih, hh, hidden
        forget_bias_init(ih, hidden)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, n) -> (N, T, H); each gate matrix drawn once for the whole sequence batch."""
        w_ih = draw_dense_weight(self.ih)
        w_hh = draw_dense_weight(self.hh) if w_ih is not None else None
        if w_ih is not None and w_hh is not None:
            return fused_lstm(x, w_ih, w_hh)
        ih, hh = draw_sample_op(self.ih), draw_sample_op(self.hh)
        return lstm_scan(ih(x, True), hh, self.hidden)

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        """(N, T, n) or (S, N, T, n) -> (S, N, T, H) with S weight draws reused at every step.

        Holds S·N·T·4H gate values at once; :class:`~model_core.models.lstm.BayesLSTM` instead runs the
        layers step by step over row chunks, which needs only S·N·4H per chunk.
        """
        ih, hh = draw_predictive_op(self.ih, ctx), draw_predictive_op(self.hh, ctx)
        return lstm_scan(ih(x, True), hh, self.hidden)

    def kl(self) -> Tensor:
        return self.ih.kl() + self.hh.kl()
