"""Checkpoints: ``weights.safetensors`` + ``manifest.json`` (see ``io`` and ``manifest``)."""

from model_core.checkpoint.io import (
    CheckpointError,
    IntegrityError,
    LoadedCheckpoint,
    ManifestError,
    TensorMismatchError,
    UnsupportedVersionError,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
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
