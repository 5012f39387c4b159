"""Checkpoints: ``weights.safetensors`` + ``manifest.json`` (see ``files``, ``io`` and ``manifest``).

Importing this package never imports torch: the manifest, the errors and ``read_manifest`` come from
the torch-free ``files`` and ``manifest`` modules, so the onnxruntime backend can serve without torch;
``load_checkpoint``, ``save_checkpoint`` and ``LoadedCheckpoint`` (which need torch) are imported
from ``io`` on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model_core.checkpoint.files import (
    CheckpointError,
    IntegrityError,
    ManifestError,
    TensorMismatchError,
    UnsupportedVersionError,
    read_manifest,
)
from model_core.checkpoint.manifest import (
    FORMAT_VERSION,
    Calibration,
    DriftReference,
    InputSchema,
    Manifest,
    OODScore,
    OutputSchema,
    SamplingMode,
    Task,
)

if TYPE_CHECKING:
    from model_core.checkpoint.io import LoadedCheckpoint, load_checkpoint, save_checkpoint

#: Names served lazily from ``model_core.checkpoint.io`` (importing it imports torch).
_TORCH_NAMES = frozenset({"LoadedCheckpoint", "load_checkpoint", "save_checkpoint"})


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        value = getattr(importlib.import_module("model_core.checkpoint.io"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "FORMAT_VERSION",
    "Calibration",
    "CheckpointError",
    "DriftReference",
    "InputSchema",
    "IntegrityError",
    "LoadedCheckpoint",
    "Manifest",
    "ManifestError",
    "OODScore",
    "OutputSchema",
    "SamplingMode",
    "Task",
    "TensorMismatchError",
    "UnsupportedVersionError",
    "load_checkpoint",
    "read_manifest",
    "save_checkpoint",
]
