"""Value types shared by every sampling backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from torch import Tensor


class Backend(str, Enum):
    """How S Monte Carlo outputs of a low-rank Bayesian linear layer are computed."""

    AUTO = "auto"
    MATERIALIZE = "materialize"  # W_s = A_s B_sᵀ, the obviously-correct reference (tests only)
    FACTORED = "factored"  # (x B_s) A_sᵀ with batched GEMMs
    LRT = "lrt"  # two-stage local reparameterisation: h exact given x, y exact given h
    LRT_A = "lrt-a"  # two-stage LRT for h, then a sampled A_s shared by the rows
    TRITON = "triton"  # fused CUDA kernel, Philox noise in registers
    CACHED = "cached"  # S factor draws made once at load time and reused


@dataclass(frozen=True)
class FactorPosterior:
    """Mean-field Gaussian posterior over W = A Bᵀ (A: m×r, B: n×r) and an optional Gaussian bias."""

    mu_a: Tensor
    sigma_a: Tensor
    mu_b: Tensor
    sigma_b: Tensor
    bias_mu: Tensor | None = None
    bias_sigma: Tensor | None = None
    #: a dict owned by the layer, where serving passes memoise tensors derived from these (variances,
    #: bias-augmented factors) while they are unchanged; None: derive them on every call
    memo: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def out_features(self) -> int:
        return int(self.mu_a.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.mu_b.shape[0])

    @property
    def rank(self) -> int:
        return int(self.mu_a.shape[1])


@dataclass(frozen=True)
class FactorSamples:
    """S posterior draws of the factors (and bias), made once and reused (the ``cached`` backend)."""

    a: Tensor  # (S, m, r)
    b: Tensor  # (S, n, r)
    bias: Tensor | None  # (S, 1, m)

    @property
    def samples(self) -> int:
        return int(self.a.shape[0])
