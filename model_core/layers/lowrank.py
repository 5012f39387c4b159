"""LowRankBayesLinear: W = A Bᵀ with a mean-field Gaussian posterior over every entry of A and B.

Parameters: 2r(m+n) for the factors plus 2m for the Gaussian bias. The shared factors correlate the
weights that a full mean-field posterior treats as independent.

Initialisation (variance matching, Touré & Stephens 2026): with σ_W² the Glorot (or He) weight variance,
factor means are drawn with variance v_A = v_B = √(damping·σ_W²/r), so r·v_A·v_B = damping·σ_W² matches
the dense layer's variance; posterior scales start at η·(σ_W²/r)^¼ (η = 0.1 by default).
``from_dense`` instead starts from
the SVD of a trained deterministic layer (LR-SVD): A = U_r √S_r, B = V_r √S_r.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext, inverse_softplus
from model_core.priors import Prior, ScaleMixturePrior
from model_core.sampling.api import sample_lowrank
from model_core.sampling.cpu import draw_factor_samples
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import FactorPosterior, FactorSamples

SIGMA_FLOOR = 1e-6


class LowRankBayesLinear(BayesianModule):
    """y = x (A Bᵀ)ᵀ + b with A (m×r), B (n×r), b (m) Gaussian."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        prior: Prior | None = None,
        bias: bool = True,
        init: str = "glorot",
        damping: float = 1.0,
        eta: float = 0.1,
        sigma_floor: float = SIGMA_FLOOR,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.prior = prior if prior is not None else ScaleMixturePrior()
        self.sigma_floor = sigma_floor
        self.mu_a = nn.Parameter(torch.empty(out_features, rank))
        self.rho_a = nn.Parameter(torch.empty(out_features, rank))
        self.mu_b = nn.Parameter(torch.empty(in_features, rank))
        self.rho_b = nn.Parameter(torch.empty(in_features, rank))
        if bias:
            self.bias_mu = nn.Parameter(torch.zeros(out_features))
            self.bias_rho = nn.Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        self._cache: FactorSamples | None = None
        self.reset_parameters(init, damping, eta)

    def weight_variance(self, init: str) -> float:
        fan_in, fan_out = self.in_features, self.out_features
        return 2.0 / fan_in if init == "he" else 2.0 / (fan_in + fan_out)

    def reset_parameters(self, init: str = "glorot", damping: float = 1.0, eta: float = 0.1) -> None:
        var_w = self.weight_variance(init)
        factor_std = (damping * var_w / self.rank) ** 0.25  # v_A = v_B = sqrt(damping σ_W² / r)
        sigma0 = eta * (var_w / self.rank) ** 0.25
        rho0 = inverse_softplus(max(sigma0 - self.sigma_floor, 1e-8))
        with torch.no_grad():
            self.mu_a.normal_(0.0, factor_std)
            self.mu_b.normal_(0.0, factor_std)
            self.rho_a.fill_(rho0)
            self.rho_b.fill_(rho0)
            if self.bias_rho is not None:
                self.bias_rho.fill_(rho0)

    @classmethod
    def from_dense(
        cls, layer: nn.Linear, rank: int, eta: float = 0.1, **kwargs: object
    ) -> LowRankBayesLinear:
        """LR-SVD: factor means from the truncated SVD of a trained dense layer."""
        out = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None, eta=eta, **kwargs)  # type: ignore[arg-type]
        u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        k = min(rank, s.numel())
        root = s[:k].sqrt()
        with torch.no_grad():
            out.mu_a.zero_()
            out.mu_b.zero_()
            out.mu_a[:, :k] = u[:, :k] * root
            out.mu_b[:, :k] = vh[:k].T * root
            if layer.bias is not None and out.bias_mu is not None:
                out.bias_mu.copy_(layer.bias.detach())
        return out

    # -- posterior -----------------------------------------------------------------------------
    def posterior(self) -> FactorPosterior:
        f = self.sigma_floor
        bias_sigma = None if self.bias_rho is None else self.cached_sigma(self.bias_rho, f)
        return FactorPosterior(
            self.mu_a,
            self.cached_sigma(self.rho_a, f),
            self.mu_b,
            self.cached_sigma(self.rho_b, f),
            self.bias_mu,
            bias_sigma,
            memo=self.__dict__.setdefault("_serving_memo", {}),
        )

    def mean_weight(self) -> Tensor:
        return self.mu_a @ self.mu_b.T

    def forward(self, x: Tensor) -> Tensor:
        if self.mode is Mode.MEAN:
            return nn.functional.linear(x, self.mean_weight(), self.bias_mu)
        post = self.posterior()
        a = post.mu_a + post.sigma_a * torch.randn_like(post.mu_a)
        b = post.mu_b + post.sigma_b * torch.randn_like(post.mu_b)
        bias = None
        if post.bias_mu is not None and post.bias_sigma is not None:
            bias = post.bias_mu + post.bias_sigma * torch.randn_like(post.bias_mu)
        return nn.functional.linear((x @ b), a, bias)

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        return sample_lowrank(x, self.posterior(), ctx.samples, ctx.noise, ctx.backend, self._cache)

    # -- cached posterior draws ----------------------------------------------------------------
    def build_cache(self, samples: int, noise: NoiseSource) -> None:
        """Draw S factor samples once (the ``cached`` backend): S·r·(m+n) memory, no RNG per request."""
        with torch.no_grad():
            draws = draw_factor_samples(self.posterior(), samples, noise)
        self._cache = FactorSamples(
            draws.a.detach(), draws.b.detach(), None if draws.bias is None else draws.bias.detach()
        )

    # -- KL ------------------------------------------------------------------------------------
    def kl(self) -> Tensor:
        post = self.posterior()
        total = self.prior.kl(post.mu_a, post.sigma_a) + self.prior.kl(post.mu_b, post.sigma_b)
        if post.bias_mu is not None and post.bias_sigma is not None:
            total = total + self.prior.kl(post.bias_mu, post.bias_sigma)
        return total

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @staticmethod
    def count(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        """2r(m+n) + 2m parameters."""
        return 2 * rank * (in_features + out_features) + (2 * out_features if bias else 0)


def default_rank_ok(in_features: int, out_features: int, rank: int) -> bool:
    """A factorisation only saves parameters when r(m+n) < m·n."""
    return rank * (in_features + out_features) < in_features * out_features and rank < min(
        in_features, out_features
    )


__all__ = ["LowRankBayesLinear", "default_rank_ok"]
