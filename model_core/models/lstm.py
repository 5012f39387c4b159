"""A stacked Bayesian LSTM with a heteroscedastic Gaussian head (``ArchitectureSpec(kind="lstm")``).

Input (N, T, in_features) windows; ``spec.hidden`` gives the width H of each LSTM layer (the air task:
two layers of H = 64); the head maps the last hidden state to ``out_features`` (2: mean and softplus
scale). Every gate matrix -- input-to-hidden (n -> 4H) and hidden-to-hidden (H -> 4H) -- and the head
come from one method, as in :class:`~model_core.models.mlp.BayesMLP`:

* ``lowrank`` / ``lrsvd`` / ``lowrank-ens``: :class:`LowRankBayesLinear` factor posteriors of rank
  ``spec.rank`` wherever the factorisation saves parameters (r(m+n) < mn and r < min(m, n)); other
  matrices (the 15 -> 256 input matrix when r >= 15, the H -> 2 head) are full mean-field, as in the MLP;
* ``bbb``: :class:`MeanFieldLinear` everywhere; ``rank1``: :class:`Rank1BayesLinear` everywhere;
* ``deterministic`` / ``ensemble``: plain linear layers; ``mcdropout``: plain layers with variational
  dropout (one mask per sequence, reused at every step) on the inputs of every LSTM layer after the
  first and on the head's input.

Weights are drawn once per sequence batch and reused at every time step (see
:mod:`model_core.layers.recurrent` for why the per-example LRT schemes are not valid here).
``predictive`` draws the S weight samples once, then runs all layers step by step over chunks of rows
(memory S·rows·4H per chunk), reusing the draws for every chunk and every step; the loop is over time
steps and chunks, never over samples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext
from model_core.layers.deterministic import DeterministicLinear, MCDropout
from model_core.layers.lowrank import LowRankBayesLinear, default_rank_ok
from model_core.layers.meanfield import MeanFieldLinear
from model_core.layers.rank1 import Rank1BayesLinear
from model_core.layers.recurrent import (
    BayesLSTMLayer,
    GateOp,
    PredictiveDraw,
    fused_lowrank_gates,
    lstm_cell,
    lstm_cell_,
)
from model_core.models.ensemble import Ensemble
from model_core.models.spec import ArchitectureSpec, Method
from model_core.priors import prior_from_dict
from model_core.sampling.noise import NoiseSource

__all__ = ["BayesLSTM", "LSTMEnsemble", "lstm_layer_ranks", "lstm_linear_shapes", "lstm_parameter_count"]

#: Upper bound on S·rows·4H floats of one predictive chunk's gate tensor (~64 MB in fp32).
PREDICTIVE_CHUNK_ELEMENTS = 16 * 1024 * 1024

LOWRANK_METHODS = (Method.LOWRANK, Method.LOWRANK_ENS, Method.LRSVD)


def lstm_linear_shapes(spec: ArchitectureSpec) -> list[tuple[int, int, bool]]:
    """(in, out, bias) of every linear map in order: ih_1, hh_1, ..., ih_L, hh_L, head."""
    shapes: list[tuple[int, int, bool]] = []
    n = spec.in_features
    for h in spec.hidden:
        shapes += [(n, 4 * h, True), (h, 4 * h, False)]
        n = h
    shapes.append((n, spec.out_features, True))
    return shapes


def lstm_layer_ranks(spec: ArchitectureSpec) -> list[int | None]:
    """Rank per linear map (order of :func:`lstm_linear_shapes`); None = not factorised."""
    shapes = lstm_linear_shapes(spec)
    if spec.ranks:
        if len(spec.ranks) != len(shapes):
            raise ValueError(f"an LSTM with {len(spec.hidden)} layers needs {len(shapes)} ranks")
        return list(spec.ranks)
    if spec.method not in LOWRANK_METHODS:
        return [None] * len(shapes)
    assert spec.rank is not None
    return [spec.rank if default_rank_ok(n, m, spec.rank) else None for n, m, _ in shapes]


def input_normalization(spec: ArchitectureSpec) -> tuple[Tensor, Tensor]:
    """Per-input (loc, scale) from ``spec.extra["input_loc"/"input_scale"]`` (default: identity).

    The preprocessed windows are MinMax-scaled to [0, 1], where PM2.5 has std ≈ 0.09; standardising
    inside the model (constants fitted on the training windows, stored in the spec) gives the LSTM
    unit-scale inputs without changing the input contract.
    """
    n = spec.in_features
    loc = torch.as_tensor(spec.extra.get("input_loc", [0.0] * n), dtype=torch.float32)
    scale = torch.as_tensor(spec.extra.get("input_scale", [1.0] * n), dtype=torch.float32)
    if loc.shape != (n,) or scale.shape != (n,) or not bool((scale > 0).all()):
        raise ValueError(f"input_loc / input_scale must be {n} numbers (scales > 0)")
    return loc, scale


def make_gate_linear(spec: ArchitectureSpec, n: int, m: int, rank: int | None, bias: bool) -> BayesianModule:
    prior = prior_from_dict(spec.prior)
    method = spec.method
    if method in (Method.DETERMINISTIC, Method.ENSEMBLE, Method.MCDROPOUT):
        return DeterministicLinear(n, m, bias=bias)
    if method is Method.RANK1:
        return Rank1BayesLinear(n, m, bias=bias)
    if method is Method.BBB or rank is None:
        return MeanFieldLinear(n, m, prior=prior, bias=bias)
    return LowRankBayesLinear(n, m, rank, prior=prior, bias=bias)


def lstm_parameter_count(spec: ArchitectureSpec) -> int:
    """Learnable scalars of ``BayesLSTM(spec)`` (means and scales both count), from the shapes alone."""
    total = 0
    for (n, m, bias), rank in zip(lstm_linear_shapes(spec), lstm_layer_ranks(spec), strict=True):
        method = spec.method
        if method in (Method.DETERMINISTIC, Method.ENSEMBLE, Method.MCDROPOUT):
            total += n * m + (m if bias else 0)
        elif method is Method.RANK1:
            total += n * m + (m if bias else 0) + 2 * (n + m)
        elif method is Method.BBB or rank is None:
            total += 2 * (n * m + (m if bias else 0))
        else:
            total += LowRankBayesLinear.count(n, m, rank, bias)
    return total * (spec.members if spec.method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else 1)


class BayesLSTM(BayesianModule):
    """(N, T, in) -> (N, out) in ``sample``/``mean`` mode; ``predictive``: (N, T, in) -> (S, N, out)."""

    input_loc: Tensor
    input_scale: Tensor

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        if not spec.hidden:
            raise ValueError("an LSTM needs at least one hidden layer")
        self.spec = spec
        shapes = lstm_linear_shapes(spec)
        ranks = lstm_layer_ranks(spec)
        linears = [make_gate_linear(spec, n, m, r, b) for (n, m, b), r in zip(shapes, ranks, strict=True)]
        self.layers = nn.ModuleList(
            BayesLSTMLayer(linears[2 * i], linears[2 * i + 1], h) for i, h in enumerate(spec.hidden)
        )
        self.head = linears[-1]
        loc, scale = input_normalization(spec)
        # Not persistent: rebuilt from the spec, so the checkpoint's tensors are the weights only.
        self.register_buffer("input_loc", loc, persistent=False)
        self.register_buffer("input_scale", scale, persistent=False)
        self.dropout = spec.dropout if spec.method is Method.MCDROPOUT else 0.0
        self.head_dropout = MCDropout(self.dropout) if self.dropout > 0 else None
        self.stochastic = spec.method not in (Method.DETERMINISTIC, Method.ENSEMBLE)

    def linears(self) -> list[BayesianModule]:
        """Every linear map in order ih_1, hh_1, ..., head (what LR-SVD initialises)."""
        out: list[BayesianModule] = []
        for layer in self.layers:
            assert isinstance(layer, BayesLSTMLayer)
            out += [layer.ih, layer.hh]
        return [*out, self.head]

    def _check(self, x: Tensor) -> Tensor:
        """Validate (N, T, in) and standardise it with the spec's input normalisation."""
        if x.dim() != 3 or x.shape[-1] != self.spec.in_features:
            raise ValueError(f"x must be (N, T, {self.spec.in_features}); got {tuple(x.shape)}")
        return (x - self.input_loc.to(x.dtype)) / self.input_scale.to(x.dtype)

    # -- training / mean ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """One weight draw per call (``sample``), shared by every sequence and step of the batch."""
        h = self._check(x)
        drop = self.dropout > 0 and self.mode is Mode.SAMPLE
        for i, layer in enumerate(self.layers):
            if drop and i > 0:  # variational dropout: one mask per sequence, all steps
                h = h * _keep_mask(h.shape[0], h.shape[-1], self.dropout, h).unsqueeze(1)
            h = layer(h)
        last = h[:, -1]
        if self.head_dropout is not None:
            last = self.head_dropout(last)
        return self.head(last)

    # -- S-sample prediction -----------------------------------------------------------------------
    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        """(N, T, in) -> (S, N, out): S weight draws made once per call, reused at every step.

        A multi-block noise source (merged requests) is handled block by block, each block drawing its
        weights from its own generator, so a request's answer does not depend on its batch mates.
        """
        if not self.stochastic:
            out = self.forward(x)
            return out.unsqueeze(0).expand(ctx.samples, *out.shape)
        x = self._check(x)
        if ctx.noise.single_block:
            return self._predictive_block(x, ctx)
        parts = [
            self._predictive_block(x[lo:hi], PredictiveContext(ctx.samples, block, ctx.backend))
            for lo, hi, block in ctx.noise.blocks()
        ]
        return torch.cat(parts, dim=1)

    def _predictive_block(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        s = ctx.samples
        draws = [(PredictiveDraw(lay.ih, ctx), PredictiveDraw(lay.hh, ctx)) for lay in self._lstm_layers()]
        rows = max(1, PREDICTIVE_CHUNK_ELEMENTS // (s * 4 * max(self.spec.hidden)))
        outs = []
        # rowwise=False: the chunks have always drawn in evaluation mode, also when serving (carrying the
        # serving mode through lets ``auto`` pick another scheme for the head: the served air answers
        # then differ in the last float32 bits, e.g. epistemic by 1.5e-5)
        for lo, hi, sub in ctx.noise.chunks(rows, rowwise=False):
            if hi > lo:
                outs.append(self._predictive_chunk(x[lo:hi], draws, PredictiveContext(s, sub, ctx.backend)))
        if not outs:
            return x.new_zeros((s, 0, self.spec.out_features))
        return torch.cat(outs, dim=1)

    def _lstm_layers(self) -> list[BayesLSTMLayer]:
        return [layer for layer in self.layers if isinstance(layer, BayesLSTMLayer)]

    def _predictive_chunk(
        self, x: Tensor, draws: list[tuple[PredictiveDraw, PredictiveDraw]], ctx: PredictiveContext
    ) -> Tensor:
        s, noise = ctx.samples, ctx.noise
        n_rows, steps = x.shape[0], x.shape[1]
        ops = [_gate_op(ih, hh, noise, s) for ih, hh in draws]
        cell = lstm_cell if torch.is_grad_enabled() else lstm_cell_
        masks: list[Tensor | None] = [None]
        for width in self.spec.hidden[:-1]:
            masks.append(self._mask(s, width, noise, x) if self.dropout > 0 else None)
        hs = [x.new_zeros((s, n_rows, h)) for h in self.spec.hidden]
        cs = [x.new_zeros((s, n_rows, h)) for h in self.spec.hidden]
        for t in range(steps):
            inp = x[:, t]  # (N, in), shared by the samples
            for i, gates in enumerate(ops):
                mask = masks[i]
                if mask is not None:
                    inp = inp * mask
                hs[i], cs[i] = cell(gates(inp, hs[i]), cs[i])
                inp = hs[i]
        last = hs[-1]
        if self.head_dropout is not None:
            last = self.head_dropout.predictive(last, ctx)
        return self.head.predictive(last, ctx)  # type: ignore[operator]

    def _mask(self, samples: int, width: int, noise: NoiseSource, like: Tensor) -> Tensor:
        keep = noise.per_row_uniform(samples, width, dtype=like.dtype) >= self.dropout
        return keep.to(like.dtype) / (1.0 - self.dropout)

    # -- KL, caches --------------------------------------------------------------------------------
    def kl(self) -> Tensor:
        """KL summed over every gate matrix and the head."""
        return torch.stack([lin.kl().reshape(()) for lin in self.linears()]).sum()

    def build_cache(self, samples: int, ctx_noise: object) -> None:
        """Draw S factor samples of every low-rank gate matrix once (the ``cached`` backend)."""
        for lin in self.linears():
            if isinstance(lin, LowRankBayesLinear):
                lin.build_cache(samples, ctx_noise)  # type: ignore[arg-type]


def _gate_op(ih: PredictiveDraw, hh: PredictiveDraw, noise: NoiseSource, samples: int) -> GateOp:
    """gates(x_t, h) for S draws: one fused GEMM when both matrices are low-rank, else ih + hh."""
    if ih.factors is not None and hh.factors is not None:
        return fused_lowrank_gates(ih.factors, hh.factors, samples)
    ih_op, hh_op = ih.bind(noise), hh.bind(noise)
    return lambda x, h: torch.add(ih_op(x, False), hh_op(h, False))


def _keep_mask(rows: int, width: int, p: float, like: Tensor) -> Tensor:
    keep = torch.rand(rows, width, dtype=like.dtype, device=like.device) >= p
    return keep.to(like.dtype) / (1.0 - p)


class LSTMEnsemble(Ensemble):
    """The project's :class:`Ensemble` (forward stacks members, predictive mixes them) over LSTMs."""

    member_class = BayesLSTM
