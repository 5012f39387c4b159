"""A multilayer perceptron whose linear layers come from one method (low-rank, BBB, rank-1, ...).

Low-rank methods factorise every layer whose rank saves parameters (r(m+n) < mn); a layer where it does
not — the 128→1 head of the ICU model — is a full mean-field layer, as in the paper (whose 13.6k-parameter
ICU model is two rank-15 layers plus a mean-field head).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, PredictiveContext, expand_samples
from model_core.layers.deterministic import DeterministicLinear, MCDropout
from model_core.layers.lowrank import LowRankBayesLinear, default_rank_ok
from model_core.layers.meanfield import MeanFieldLinear
from model_core.layers.rank1 import Rank1BayesLinear
from model_core.models.spec import ArchitectureSpec, Method
from model_core.priors import prior_from_dict
from model_core.sampling.noise import NoiseSource

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": nn.functional.gelu,
}


def layer_ranks(spec: ArchitectureSpec) -> list[int | None]:
    """Rank per linear layer (None where the layer is not factorised)."""
    if spec.ranks:
        return list(spec.ranks)
    widths = spec.widths
    if spec.method not in (Method.LOWRANK, Method.LOWRANK_ENS, Method.LRSVD):
        return [None] * (len(widths) - 1)
    assert spec.rank is not None
    return [spec.rank if default_rank_ok(n, m, spec.rank) else None for n, m in pairwise(widths)]


def make_linear(spec: ArchitectureSpec, n: int, m: int, rank: int | None) -> BayesianModule:
    prior = prior_from_dict(spec.prior)
    method = spec.method
    if method in (Method.DETERMINISTIC, Method.ENSEMBLE, Method.MCDROPOUT):
        return DeterministicLinear(n, m)
    if method is Method.RANK1:
        return Rank1BayesLinear(n, m)
    if method is Method.BBB or rank is None:
        return MeanFieldLinear(n, m, prior=prior)
    return LowRankBayesLinear(n, m, rank, prior=prior)


class BayesMLP(BayesianModule):
    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = spec.widths
        ranks = layer_ranks(spec)
        self.layers = nn.ModuleList(
            make_linear(spec, n, m, r) for n, m, r in zip(widths[:-1], widths[1:], ranks, strict=True)
        )
        use_dropout = spec.method is Method.MCDROPOUT and spec.dropout > 0
        self.dropouts = nn.ModuleList(MCDropout(spec.dropout) for _ in spec.hidden) if use_dropout else None
        self.act = ACTIVATIONS[spec.activation]

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
                if self.dropouts is not None:
                    x = self.dropouts[i](x)
        return x

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        """(N, in) -> (S, N, out); each layer draws for all S samples at once."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer.predictive(x, ctx)  # type: ignore[operator]
            if i < last:
                x = self.act(x)
                if self.dropouts is not None:
                    x = self.dropouts[i].predictive(x, ctx)  # type: ignore[operator]
        return expand_samples(x, ctx.samples)  # a fully deterministic path stays (N, out) until here

    def build_cache(self, samples: int, noise: NoiseSource) -> None:
        """Draw the ``cached`` backend's factor samples for every low-rank layer."""
        for layer in self.layers:
            if isinstance(layer, LowRankBayesLinear):
                layer.build_cache(samples, noise)
