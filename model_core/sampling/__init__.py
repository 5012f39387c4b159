"""The low-rank Monte Carlo sampling op (entry point :mod:`model_core.sampling.api`, dispatch
:mod:`model_core.sampling.backends`)."""

from model_core.sampling.api import sample_lowrank
from model_core.sampling.backends import BACKENDS, choose_backend, register_backend, register_triton_backend
from model_core.sampling.cpu import draw_factor_samples
from model_core.sampling.custom_op import sample_lowrank_seeded  # registers torch.ops.lrbnn.sample_lowrank
from model_core.sampling.noise import NoiseError, NoiseSource, make_generator
from model_core.sampling.types import Backend, FactorPosterior, FactorSamples

__all__ = [
    "BACKENDS",
    "Backend",
    "FactorPosterior",
    "FactorSamples",
    "NoiseError",
    "NoiseSource",
    "choose_backend",
    "draw_factor_samples",
    "make_generator",
    "register_backend",
    "register_triton_backend",
    "sample_lowrank",
    "sample_lowrank_seeded",
]
