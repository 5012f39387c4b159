"""Exact PyTorch sampling schemes (CPU or CUDA eager).

Shapes: ``x`` is (N, n) when every sample sees the same input (the first layer) or (S, N, n) when each
sample has its own activations (later layers); every scheme returns (S, N, m). Every scheme is exact:
the one-stage moment-matched shortcut (a single Gaussian for y given x) is deliberately absent because it
loses the output correlations and tails that the product of two Gaussian factors has.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import FactorPosterior, FactorSamples


def _draw(mu: Tensor, sigma: Tensor, noise: NoiseSource, samples: int) -> Tensor:
    eps = noise.shared(samples, *mu.shape, dtype=mu.dtype)
    return torch.addcmul(mu, sigma, eps)


def _shared_bias(post: FactorPosterior, noise: NoiseSource, samples: int) -> Tensor | None:
    if post.bias_mu is None:
        return None
    if post.bias_sigma is None:
        return post.bias_mu.expand(samples, 1, -1)
    return _draw(post.bias_mu.view(1, -1), post.bias_sigma.view(1, -1), noise, samples)


def materialize(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """Draw W_s = A_s B_sᵀ explicitly: S·m·n memory, the slow reference."""
    a = _draw(post.mu_a, post.sigma_a, noise, samples)
    b = _draw(post.mu_b, post.sigma_b, noise, samples)
    bias = _shared_bias(post, noise, samples)
    w = torch.bmm(a, b.transpose(1, 2))  # (S, m, n)
    y = torch.matmul(x, w.transpose(1, 2))
    return y if bias is None else y + bias


def factored(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """(x B_s) A_sᵀ: two batched GEMMs through the rank-r bottleneck, S·r·(m+n) normals."""
    a = _draw(post.mu_a, post.sigma_a, noise, samples)
    b = _draw(post.mu_b, post.sigma_b, noise, samples)
    bias = _shared_bias(post, noise, samples)
    return apply_factors(x, FactorSamples(a, b, bias))


def apply_factors(x: Tensor, draws: FactorSamples, samples: int | None = None) -> Tensor:
    """y_s = (x B_s) A_sᵀ + b_s for given factor draws (the first ``samples`` of them)."""
    s = draws.samples if samples is None else samples
    a, b = draws.a[:s], draws.b[:s]
    h = torch.matmul(x, b)  # (N, n) @ (S, n, r) broadcasts to (S, N, r)
    if draws.bias is None:
        return torch.bmm(h, a.transpose(1, 2))
    return torch.baddbmm(draws.bias[:s], h, a.transpose(1, 2))


def _first_stage(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """h = x B exactly: Gaussian per example with mean x μ_B and variance x² σ_B² (computed once)."""
    mu_h = torch.matmul(x, post.mu_b)
    std_h = torch.matmul(x * x, post.sigma_b * post.sigma_b).sqrt_()
    eps = noise.per_row(samples, post.rank, dtype=x.dtype)
    return torch.addcmul(mu_h, std_h, eps)  # broadcasts (N, r) to (S, N, r) when x is shared


def lrt(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """Two-stage local reparameterisation: S·N·(r+m) normals, exact per example.

    Given h, the outputs y_j = Σ_k h_k A_jk + b_j are independent Gaussians (rows of A are independent),
    so y is drawn exactly with mean h μ_Aᵀ + μ_b and variance h² σ_A²ᵀ + σ_b².
    """
    h = _first_stage(x, post, samples, noise)
    s, n_rows, r = h.shape
    h2 = h.reshape(s * n_rows, r)
    m = post.out_features
    mu_y = h2 @ post.mu_a.T if post.bias_mu is None else torch.addmm(post.bias_mu, h2, post.mu_a.T)
    var_a = (post.sigma_a * post.sigma_a).T
    if post.bias_sigma is None:
        var_y = (h2 * h2) @ var_a
    else:
        var_y = torch.addmm(post.bias_sigma * post.bias_sigma, h2 * h2, var_a)
    eps = noise.per_row(samples, m, dtype=x.dtype).reshape(s * n_rows, m)
    return torch.addcmul(mu_y, var_y.sqrt_(), eps).view(s, n_rows, m)


def lrt_a(x: Tensor, post: FactorPosterior, samples: int, noise: NoiseSource) -> Tensor:
    """Exact h by LRT, then a sampled A_s shared by the rows: S·N·r + S·m·r normals."""
    h = _first_stage(x, post, samples, noise)
    a = _draw(post.mu_a, post.sigma_a, noise, samples)
    bias = _shared_bias(post, noise, samples)
    if bias is None:
        return torch.bmm(h, a.transpose(1, 2))
    return torch.baddbmm(bias, h, a.transpose(1, 2))


def draw_factor_samples(post: FactorPosterior, samples: int, noise: NoiseSource) -> FactorSamples:
    """S draws of the factors, for the ``cached`` backend."""
    a = _draw(post.mu_a, post.sigma_a, noise, samples)
    b = _draw(post.mu_b, post.sigma_b, noise, samples)
    return FactorSamples(a.contiguous(), b.contiguous(), _shared_bias(post, noise, samples))
