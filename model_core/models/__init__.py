"""Models built from an :class:`ArchitectureSpec` through the registry."""

from model_core.models.ensemble import Ensemble
from model_core.models.mlp import BayesMLP
from model_core.models.registry import BUILDERS, build_model, register
from model_core.models.spec import ArchitectureSpec, Likelihood, Method

__all__ = [
    "BUILDERS",
    "ArchitectureSpec",
    "BayesMLP",
    "Ensemble",
    "Likelihood",
    "Method",
    "build_model",
    "register",
]
