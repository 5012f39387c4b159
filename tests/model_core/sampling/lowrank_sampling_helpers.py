"""Shared helpers for the sampling-op tests: random posteriors and Monte Carlo moment comparisons."""

from __future__ import annotations

import torch
from torch import Tensor

from model_core.sampling import FactorPosterior

#: Number of standard errors a moment may differ by (per entry; ~6e-7 two-sided false-alarm rate).
Z = 5.0


def random_posterior(m: int, n: int, r: int, seed: int, bias: bool = True) -> FactorPosterior:
    """Factors with sizeable posterior scales, so every variance term matters."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float) -> Tensor:
        return torch.randn(shape, generator=g) * scale

    def scale(*shape: int) -> Tensor:
        return 0.2 + 0.6 * torch.rand(shape, generator=g)

    if not bias:
        return FactorPosterior(normal(m, r, scale=0.7), scale(m, r), normal(n, r, scale=0.7), scale(n, r))
    return FactorPosterior(
        normal(m, r, scale=0.7),
        scale(m, r),
        normal(n, r, scale=0.7),
        scale(n, r),
        normal(m, scale=1.0),
        scale(m),
    )


def _stats(y: Tensor, example: int, cols: tuple[int, int]) -> dict[str, Tensor]:
    y = y.double()
    s = y.shape[0]
    mean = y.mean(0)
    c = y - mean
    var = (c * c).sum(0) / (s - 1)
    m4 = (c**4).mean(0)
    prod = c[:, example, cols[0]] * c[:, example, cols[1]]
    return {
        "mean": mean,
        "se2_mean": var / s,
        "var": var,
        "se2_var": (m4 - var * var).clamp_min(0) / s,
        "cov": prod.sum() / (s - 1),
        "se2_cov": prod.var() / s,
    }


def assert_same_distribution(
    y: Tensor, ref: Tensor, example: int = 0, cols: tuple[int, int] = (0, 1), label: str = ""
) -> None:
    """Means, variances (every output) and cov(y_c0, y_c1) for one example agree within Z standard errors.

    The standard errors are estimated from the two samples themselves (fourth moments for the variances),
    so the tolerance shrinks as 1/√S.
    """
    assert y.shape[1:] == ref.shape[1:], (y.shape, ref.shape)
    assert torch.isfinite(y).all(), label
    a, b = _stats(y, example, cols), _stats(ref, example, cols)
    for key in ("mean", "var", "cov"):
        diff = (a[key] - b[key]).abs()
        tol = Z * (a[f"se2_{key}"] + b[f"se2_{key}"]).sqrt() + 1e-9
        worst = (diff / tol).max().item()
        assert worst <= 1.0, f"{label}: {key} differs by {worst * Z:.2f} standard errors"
