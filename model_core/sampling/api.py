"""The low-rank Monte Carlo sampling op's one entry point.

``sample_lowrank(x, posterior, samples, noise)`` returns the S×N×m outputs of a low-rank Bayesian linear
layer. The backend registry and the rule that picks a backend (``auto``) live in
:mod:`model_core.sampling.backends`; under ``torch.compile``/``torch.export`` the call becomes the
opaque custom op of :mod:`model_core.sampling.custom_op`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model_core.sampling import cpu
from model_core.sampling.backends import check_arguments, dispatch
from model_core.sampling.custom_op import sample_lowrank_seeded
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend, FactorPosterior, FactorSamples


def sample_lowrank(
    x: Tensor,
    post: FactorPosterior,
    samples: int,
    noise: NoiseSource,
    backend: Backend | str = Backend.AUTO,
    cache: FactorSamples | None = None,
) -> Tensor:
    """S Monte Carlo outputs (S, N, m) of y = x (A Bᵀ)ᵀ + b under the factor posterior.

    ``x`` is (N, n), shared by all samples, or (S, N, n) with per-sample activations. The same noise
    source state and backend always give the same result.
    """
    backend = Backend(backend)
    check_arguments(x, post, samples)
    if backend is Backend.CACHED:
        if cache is None:
            raise ValueError("the cached backend needs factor samples drawn at load time")
        if samples > cache.samples:
            raise ValueError(f"{samples} samples requested but only {cache.samples} are cached")
        return cpu.apply_factors(x, cache, samples)
    if torch.compiler.is_compiling():  # torch.compile / export see one opaque op, noise from row seeds
        return sample_lowrank_seeded(x, post, samples, noise.seeds(), backend.value)
    return dispatch(x, post, samples, noise, backend)
