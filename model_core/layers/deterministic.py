"""Deterministic and MC-dropout layers with the same interface as the Bayesian ones."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext, expand_samples


class DeterministicLinear(BayesianModule):
    """A plain linear layer. Its predictive path keeps a shared (N, n) input shared, (N, m): every sample
    is then the very same computation, so the samples agree bit for bit (computing S copies would let
    BLAS round rows differently by their position, and that noise would show up as a tiny MI)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        return self.linear(x)

    def kl(self) -> Tensor:
        return torch.zeros((), device=self.linear.weight.device)


class MCDropout(BayesianModule):
    """Dropout kept on at prediction time (Gal & Ghahramani 2016); masks drawn per sample and example."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.mode is Mode.MEAN or self.p == 0.0:
            return x
        return nn.functional.dropout(x, self.p, training=True)

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        x = expand_samples(x, ctx.samples)
        if self.p == 0.0:
            return x
        keep = ctx.noise.per_row_uniform(ctx.samples, x.shape[-1], dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)

    def kl(self) -> Tensor:
        return torch.zeros(())
