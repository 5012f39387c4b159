"""Priors over weights (or low-rank factor entries) and their KL terms.

The scale mixture follows Blundell et al. (2015): ``0.5·N(0, 1) + 0.5·N(0, σ₂²)`` with σ₂ = e⁻⁶ a
*standard deviation* (so the narrow component has variance e⁻¹²). Its KL to a Gaussian posterior has
no closed form, so :meth:`ScaleMixturePrior.kl` is a Monte Carlo estimate at one posterior draw. The
Gaussian prior has a closed-form KL.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from enum import Enum

import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mu: Tensor | float, sigma: Tensor | float) -> Tensor:
    """Elementwise log N(x; mu, sigma²)."""
    sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return -0.5 * _LOG_2PI - torch.log(sigma_t) - 0.5 * ((x - mu) / sigma_t) ** 2


class Prior(ABC):
    """A factorised prior over parameter entries."""

    @abstractmethod
    def log_prob(self, w: Tensor) -> Tensor:
        """Elementwise log-density."""

    def kl(self, mu: Tensor, sigma: Tensor, sample: Tensor | None = None) -> Tensor:
        """KL(N(mu, sigma²) ‖ prior) summed over entries (Monte Carlo unless overridden)."""
        w = mu + sigma * torch.randn_like(mu) if sample is None else sample
        return (gaussian_log_prob(w, mu, sigma) - self.log_prob(w)).sum()

    @abstractmethod
    def to_dict(self) -> dict[str, float | str]:
        """JSON-safe description, stored in the checkpoint manifest."""


class GaussianPrior(Prior):
    """N(0, sigma²); the KL to a Gaussian posterior is exact."""

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = float(sigma)

    def log_prob(self, w: Tensor) -> Tensor:
        return gaussian_log_prob(w, 0.0, self.sigma)

    def kl(self, mu: Tensor, sigma: Tensor, sample: Tensor | None = None) -> Tensor:
        var_ratio = (sigma / self.sigma) ** 2
        return 0.5 * (var_ratio + (mu / self.sigma) ** 2 - 1.0 - torch.log(var_ratio)).sum()

    def to_dict(self) -> dict[str, float | str]:
        return {"kind": PriorKind.GAUSSIAN.value, "sigma": self.sigma}


class ScaleMixturePrior(Prior):
    """pi·N(0, sigma1²) + (1-pi)·N(0, sigma2²); sigma1 and sigma2 are standard deviations."""

    def __init__(self, pi: float = 0.5, sigma1: float = 1.0, sigma2: float = math.exp(-6.0)) -> None:
        if not 0.0 < pi < 1.0:
            raise ValueError(f"mixture weight pi must lie in (0, 1), got {pi}")
        self.pi, self.sigma1, self.sigma2 = float(pi), float(sigma1), float(sigma2)

    def log_prob(self, w: Tensor) -> Tensor:
        lp1 = math.log(self.pi) + gaussian_log_prob(w, 0.0, self.sigma1)
        lp2 = math.log1p(-self.pi) + gaussian_log_prob(w, 0.0, self.sigma2)
        return torch.logaddexp(lp1, lp2)

    def to_dict(self) -> dict[str, float | str]:
        return {
            "kind": PriorKind.SCALE_MIXTURE.value,
            "pi": self.pi,
            "sigma1": self.sigma1,
            "sigma2": self.sigma2,
        }


class PriorKind(str, Enum):
    GAUSSIAN = "gaussian"
    SCALE_MIXTURE = "scale_mixture"


def prior_from_dict(spec: dict[str, float | str] | None) -> Prior:
    """Rebuild a prior from :meth:`Prior.to_dict` output (default: the paper's scale mixture)."""
    if spec is None:
        return ScaleMixturePrior()
    kind = PriorKind(str(spec["kind"]))
    if kind is PriorKind.GAUSSIAN:
        return GaussianPrior(float(spec.get("sigma", 1.0)))
    return ScaleMixturePrior(float(spec["pi"]), float(spec["sigma1"]), float(spec["sigma2"]))
