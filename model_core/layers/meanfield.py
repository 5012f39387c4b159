"""Full-rank mean-field Bayes-by-backprop (Blundell et al. 2015): a Gaussian per weight, 2(mn + m) parameters.

Predictive sampling uses the local reparameterisation trick, which is exact per example for a single
dense layer: given x, the outputs are independent Gaussians with mean x μ_Wᵀ and variance x² σ_W²ᵀ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext, inverse_softplus
from model_core.priors import Prior, ScaleMixturePrior
from model_core.sampling.cpu import meanfield_rows, rowwise


class MeanFieldLinear(BayesianModule):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        prior: Prior | None = None,
        bias: bool = True,
        sigma_init: float | None = None,
        sigma_floor: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.prior = prior if prior is not None else ScaleMixturePrior()
        self.sigma_floor = sigma_floor
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_rho = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.bias_rho = nn.Parameter(torch.empty(out_features)) if bias else None
        std = math.sqrt(2.0 / (in_features + out_features))
        rho0 = inverse_softplus(sigma_init if sigma_init is not None else 0.1 * std)
        with torch.no_grad():
            self.weight_mu.normal_(0.0, std)
            self.weight_rho.fill_(rho0)
            if self.bias_rho is not None:
                self.bias_rho.fill_(rho0)

    def sigmas(self) -> tuple[Tensor, Tensor | None]:
        bias_sigma = None if self.bias_rho is None else self.cached_sigma(self.bias_rho, self.sigma_floor)
        return self.cached_sigma(self.weight_rho, self.sigma_floor), bias_sigma

    def forward(self, x: Tensor) -> Tensor:
        if self.mode is Mode.MEAN:
            return nn.functional.linear(x, self.weight_mu, self.bias_mu)
        w_sigma, b_sigma = self.sigmas()
        w = self.weight_mu + w_sigma * torch.randn_like(w_sigma)
        b = None
        if self.bias_mu is not None and b_sigma is not None:
            b = self.bias_mu + b_sigma * torch.randn_like(b_sigma)
        return nn.functional.linear(x, w, b)

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        w_sigma, b_sigma = self.sigmas()
        grad = torch.is_grad_enabled() and self.weight_mu.requires_grad
        if x.dim() in (2, 3) and rowwise(ctx.noise) and not grad:  # serving: batch invariant
            b_var = None if b_sigma is None else b_sigma * b_sigma
            return meanfield_rows(
                x, self.weight_mu, w_sigma * w_sigma, self.bias_mu, b_var, ctx.samples, ctx.noise
            )
        mean = nn.functional.linear(x, self.weight_mu, self.bias_mu)
        var = nn.functional.linear(x * x, w_sigma * w_sigma, None if b_sigma is None else b_sigma * b_sigma)
        eps = ctx.noise.per_row(ctx.samples, self.out_features, dtype=x.dtype)
        return torch.addcmul(mean, var.sqrt(), eps)

    def kl(self) -> Tensor:
        w_sigma, b_sigma = self.sigmas()
        total = self.prior.kl(self.weight_mu, w_sigma)
        if self.bias_mu is not None and b_sigma is not None:
            total = total + self.prior.kl(self.bias_mu, b_sigma)
        return total
