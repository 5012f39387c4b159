"""The torch-free half of checkpoints: file names, errors, the sha256 and ``manifest.json`` read/write.

Why a separate module: the onnxruntime backend verifies a version (manifest valid, format supported,
weights hash) on a server without torch, so nothing here may import torch; loading and saving the
weights themselves live in :mod:`model_core.checkpoint.io`, which builds on this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import ValidationError

from model_core.checkpoint.manifest import SUPPORTED_FORMAT_VERSIONS, Manifest
from model_core.novelty import NOVELTY_FILE, NoveltyDetector, NoveltyFeatures

WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that must not be served."""


class ManifestError(CheckpointError):
    pass


class UnsupportedVersionError(CheckpointError):
    pass


class IntegrityError(CheckpointError):
    pass


class TensorMismatchError(CheckpointError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path, manifest: Manifest) -> None:
    """Atomically (re)write ``manifest.json``; the weights and their hash are left as they are."""
    out = Path(directory)
    tmp_m = out / (MANIFEST_FILE + ".tmp")
    tmp_m.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp_m, out / MANIFEST_FILE)


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: the manifest must be a JSON object")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise UnsupportedVersionError(
            f"{path}: format_version {version!r} is not supported "
            f"(supported: {sorted(SUPPORTED_FORMAT_VERSIONS)})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ManifestError(
            f"{path}: field {where!r}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


def verify_weights(directory: str | Path, manifest: Manifest) -> Path:
    """The weights file exists and its sha256 equals the manifest's; returns its path."""
    return verify_file(Path(directory) / WEIGHTS_FILE, manifest.sha256, "weights")


def verify_file(path: Path, expected: str, what: str) -> Path:
    """``path`` exists and its sha256 is ``expected`` (the manifest's), else :class:`IntegrityError`."""
    if not path.is_file():
        raise IntegrityError(f"{path}: {what} file missing")
    digest = sha256_file(path)
    if digest != expected:
        raise IntegrityError(f"{path}: sha256 {digest} does not match the manifest's {expected}")
    return path


def load_novelty(directory: str | Path, manifest: Manifest) -> NoveltyDetector | None:
    """The verified novelty detector of a checkpoint (None when its manifest has none).

    Checks, in order: the file exists, its sha256 is the manifest's ``calibration.novelty.sha256``, it
    is a readable safetensors file, and its arrays have the manifest's dimension and finite values.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = manifest.calibration.novelty
    if meta is None:
        return None
    path = verify_file(Path(directory) / NOVELTY_FILE, meta.sha256, "novelty (the manifest has a detector)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise IntegrityError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        detector = NoveltyDetector.from_tensors(NoveltyFeatures(meta.features), tensors, meta.meta)
    except ValueError as exc:
        raise IntegrityError(f"{path}: {exc}") from None
    if detector.dim != meta.dim:
        raise IntegrityError(f"{path}: dimension {detector.dim} != the manifest's {meta.dim}")
    return detector
