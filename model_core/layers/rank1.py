"""Rank-1 multiplicative Bayesian layer (Dusenberry et al. 2020): W ∘ (r sᵀ), Gaussian posteriors on r, s.

y = ((x ∘ s) Wᵀ) ∘ r + b with a deterministic shared W and b. Predictive samples draw r and s per example
(exact per example, and independent of what else is in the batch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext, inverse_softplus, softplus_floor
from model_core.priors import GaussianPrior, Prior


class Rank1BayesLinear(BayesianModule):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        prior: Prior | None = None,
        bias: bool = True,
        sigma_init: float = 0.05,
        sigma_floor: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # Dusenberry et al. put N(1, σ²) priors on the multiplicative vectors.
        self.prior = prior if prior is not None else GaussianPrior(1.0)
        self.sigma_floor = sigma_floor
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.r_mu = nn.Parameter(torch.empty(out_features))
        self.r_rho = nn.Parameter(torch.full((out_features,), inverse_softplus(sigma_init)))
        self.s_mu = nn.Parameter(torch.empty(in_features))
        self.s_rho = nn.Parameter(torch.full((in_features,), inverse_softplus(sigma_init)))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():  # random-sign init around 1, as in the paper
            self.r_mu.copy_(1.0 + 0.1 * torch.randn(out_features))
            self.s_mu.copy_(1.0 + 0.1 * torch.randn(in_features))

    def _sigmas(self) -> tuple[Tensor, Tensor]:
        return softplus_floor(self.r_rho, self.sigma_floor), softplus_floor(self.s_rho, self.sigma_floor)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode is Mode.MEAN:
            return nn.functional.linear(x * self.s_mu, self.weight) * self.r_mu + (
                0 if self.bias is None else self.bias
            )
        r_sigma, s_sigma = self._sigmas()
        lead = x.shape[:-1]
        s = self.s_mu + s_sigma * torch.randn(*lead, self.in_features, dtype=x.dtype, device=x.device)
        r = self.r_mu + r_sigma * torch.randn(*lead, self.out_features, dtype=x.dtype, device=x.device)
        y = nn.functional.linear(x * s, self.weight) * r
        return y if self.bias is None else y + self.bias

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        r_sigma, s_sigma = self._sigmas()
        s = torch.addcmul(self.s_mu, s_sigma, ctx.noise.per_row(ctx.samples, self.in_features, dtype=x.dtype))
        r = torch.addcmul(
            self.r_mu, r_sigma, ctx.noise.per_row(ctx.samples, self.out_features, dtype=x.dtype)
        )
        y = nn.functional.linear(x * s, self.weight) * r
        return y if self.bias is None else y + self.bias

    def kl(self) -> Tensor:
        r_sigma, s_sigma = self._sigmas()
        return self.prior.kl(self.r_mu, r_sigma) + self.prior.kl(self.s_mu, s_sigma)
