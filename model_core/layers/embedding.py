"""Token embeddings with the layer interface: deterministic, full mean-field (BBB) and low-rank Bayesian.

The low-rank Bayesian embedding is E = A Bᵀ (V × d) with A (V × r), B (d × r) and a mean-field Gaussian
posterior over every factor entry (2r(V + d) parameters). A batch only touches the rows of E for its
own tokens, so every sampling path gathers A's rows for the batch's **unique** token ids first and draws
noise for those rows only: U·r + d·r normals per weight sample instead of V·r + d·r, and no gradient (or
work) for the rest of the vocabulary. The KL term still covers every row (it does not depend on data).

Shapes: ``forward(ids)`` maps int64 (N, L) to (N, L, d) with one weight sample per call (``sample``
mode) or the posterior mean (``mean`` mode); ``predictive(ids, ctx)`` maps (N, L) to (S, N, L, d) with
one weight sample per Monte Carlo sample, **shared by every token of every sequence** in the call (the
same token id gets the same embedding row within a sample, as a weight sample demands). The noise is
row-shared, so it comes from a single-block noise source (the transformer splits multi-block sources).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext, inverse_softplus, softplus_floor
from model_core.priors import Prior, ScaleMixturePrior

__all__ = [
    "DeterministicEmbedding",
    "LowRankBayesEmbedding",
    "MeanFieldEmbedding",
    "unique_rows",
]


def unique_rows(ids: Tensor) -> tuple[Tensor, Tensor]:
    """(sorted unique ids (U,), inverse index with the shape of ``ids``)."""
    uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    return uniq, inverse


class DeterministicEmbedding(BayesianModule):
    """A plain embedding table (deterministic, ensemble and MC-dropout methods)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float = 1.0) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim) * std)

    def forward(self, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, self.weight)

    def predictive(self, ids: Tensor, ctx: PredictiveContext) -> Tensor:
        out = self.forward(ids)
        return out.unsqueeze(0).expand(ctx.samples, *out.shape)

    def kl(self) -> Tensor:
        return torch.zeros((), device=self.weight.device)


class MeanFieldEmbedding(BayesianModule):
    """A Gaussian per table entry (Bayes by backprop): 2·V·d parameters; only batch rows are sampled."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        prior: Prior | None = None,
        std: float = 1.0,
        sigma_init: float | None = None,
        sigma_floor: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.prior = prior if prior is not None else ScaleMixturePrior()
        self.sigma_floor = sigma_floor
        self.weight_mu = nn.Parameter(torch.randn(num_embeddings, embedding_dim) * std)
        rho0 = inverse_softplus(sigma_init if sigma_init is not None else 0.1 * std)
        self.weight_rho = nn.Parameter(torch.full((num_embeddings, embedding_dim), rho0))

    def sigma(self) -> Tensor:
        return softplus_floor(self.weight_rho, self.sigma_floor)

    def forward(self, ids: Tensor) -> Tensor:
        if self.mode is Mode.MEAN:
            return nn.functional.embedding(ids, self.weight_mu)
        uniq, inverse = unique_rows(ids)
        mu = self.weight_mu[uniq]
        rows = mu + softplus_floor(self.weight_rho[uniq], self.sigma_floor) * torch.randn_like(mu)
        return rows[inverse]

    def predictive(self, ids: Tensor, ctx: PredictiveContext) -> Tensor:
        uniq, inverse = unique_rows(ids)
        mu = self.weight_mu[uniq]
        sigma = softplus_floor(self.weight_rho[uniq], self.sigma_floor)
        eps = ctx.noise.shared(ctx.samples, *mu.shape, dtype=mu.dtype)
        return torch.addcmul(mu, sigma, eps)[:, inverse]  # (S, U, d) -> (S, N, L, d)

    def kl(self) -> Tensor:
        return self.prior.kl(self.weight_mu, self.sigma())

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LowRankBayesEmbedding(BayesianModule):
    """E = A Bᵀ with Gaussian factors; samples only the rows of A for the tokens in the batch."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        prior: Prior | None = None,
        std: float = 1.0,
        eta: float = 0.5,
        sigma_floor: float = 1e-6,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.prior = prior if prior is not None else ScaleMixturePrior()
        self.sigma_floor = sigma_floor
        # Variance matching as in LowRankBayesLinear: r·v_A·v_B = std², v_A = v_B.
        var = std * std
        factor_std = (var / rank) ** 0.25
        rho0 = inverse_softplus(max(eta * factor_std - sigma_floor, 1e-8))
        self.mu_a = nn.Parameter(torch.randn(num_embeddings, rank) * factor_std)
        self.rho_a = nn.Parameter(torch.full((num_embeddings, rank), rho0))
        self.mu_b = nn.Parameter(torch.randn(embedding_dim, rank) * factor_std)
        self.rho_b = nn.Parameter(torch.full((embedding_dim, rank), rho0))
        self._cache: tuple[Tensor, Tensor] | None = None
        #: Unique rows gathered by the last call (for tests and diagnostics).
        self.last_rows: Tensor | None = None

    def sigmas(self, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        rho_a = self.rho_a if rows is None else self.rho_a[rows]
        return softplus_floor(rho_a, self.sigma_floor), softplus_floor(self.rho_b, self.sigma_floor)

    def mean_weight(self) -> Tensor:
        return self.mu_a @ self.mu_b.T

    def forward(self, ids: Tensor) -> Tensor:
        uniq, inverse = unique_rows(ids)
        self.last_rows = uniq
        mu_a = self.mu_a[uniq]
        if self.mode is Mode.MEAN:
            return (mu_a @ self.mu_b.T)[inverse]
        sigma_a, sigma_b = self.sigmas(uniq)
        a = mu_a + sigma_a * torch.randn_like(mu_a)
        b = self.mu_b + sigma_b * torch.randn_like(self.mu_b)
        return (a @ b.T)[inverse]

    def predictive(self, ids: Tensor, ctx: PredictiveContext) -> Tensor:
        """(N, L) ids -> (S, N, L, d): per sample, E_s rows = A_s[u] B_sᵀ for the batch's unique ids u."""
        uniq, inverse = unique_rows(ids)
        self.last_rows = uniq
        if ctx.use_cache and self._cache is not None:
            a_all, b = self._cache
            if ctx.samples > a_all.shape[0]:
                raise ValueError(f"{ctx.samples} samples requested but only {a_all.shape[0]} are cached")
            a, b = a_all[: ctx.samples, uniq], b[: ctx.samples]
        else:
            mu_a = self.mu_a[uniq]
            sigma_a, sigma_b = self.sigmas(uniq)
            a = torch.addcmul(mu_a, sigma_a, ctx.noise.shared(ctx.samples, *mu_a.shape, dtype=mu_a.dtype))
            b = torch.addcmul(
                self.mu_b, sigma_b, ctx.noise.shared(ctx.samples, *self.mu_b.shape, dtype=mu_a.dtype)
            )
        rows = torch.bmm(a, b.transpose(1, 2))  # (S, U, d)
        return rows[:, inverse]

    def build_cache(self, samples: int, noise: object) -> None:
        """Draw S full factor samples once (the ``cached`` backend): S·r·(V + d) floats."""
        from model_core.sampling.noise import NoiseSource

        assert isinstance(noise, NoiseSource)
        with torch.no_grad():
            sigma_a, sigma_b = self.sigmas()
            a = torch.addcmul(self.mu_a, sigma_a, noise.shared(samples, *self.mu_a.shape))
            b = torch.addcmul(self.mu_b, sigma_b, noise.shared(samples, *self.mu_b.shape))
        self._cache = (a.detach(), b.detach())

    def kl(self) -> Tensor:
        sigma_a, sigma_b = self.sigmas()
        return self.prior.kl(self.mu_a, sigma_a) + self.prior.kl(self.mu_b, sigma_b)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"

    @staticmethod
    def count(num_embeddings: int, embedding_dim: int, rank: int) -> int:
        """2r(V + d) parameters."""
        return 2 * rank * (num_embeddings + embedding_dim)
