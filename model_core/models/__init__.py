"""Models built from an :class:`ArchitectureSpec` through the registry.

The spec (``ArchitectureSpec``, ``Likelihood``, ``Method``) is torch-free and imported eagerly, since
checkpoint manifests embed it and the onnxruntime backend reads them without torch; the modules
(``Ensemble``, ``BayesMLP``) and the registry need torch and are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model_core.models.spec import ArchitectureSpec, Likelihood, Method

if TYPE_CHECKING:
    from model_core.models.ensemble import Ensemble
    from model_core.models.mlp import BayesMLP
    from model_core.models.registry import BUILDERS, build_model, register

#: Name -> the module (importing torch) that defines it.
_LAZY = {
    "Ensemble": "model_core.models.ensemble",
    "BayesMLP": "model_core.models.mlp",
    "BUILDERS": "model_core.models.registry",
    "build_model": "model_core.models.registry",
    "register": "model_core.models.registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
