"""Save, verify and load checkpoints: ``weights.safetensors`` + ``manifest.json``; nothing is unpickled.

Loading checks, in order: the manifest parses and its format version is supported; the weights file's
sha256 equals the manifest's; the architecture builds; the file's tensor names and shapes are exactly the
architecture's. Any mismatch raises a :class:`CheckpointError` subclass naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model_core.checkpoint.manifest import FORMAT_VERSION, SUPPORTED_FORMAT_VERSIONS, Manifest
from model_core.layers.base import BayesianModule
from model_core.models.registry import UnknownArchitectureError, build_model

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


@dataclass
class LoadedCheckpoint:
    model: BayesianModule
    manifest: Manifest
    path: Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, model: BayesianModule, manifest: Manifest | dict) -> Manifest:
    """Write weights and manifest (sha256 and parameter count filled in); returns the final manifest."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_FILE
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "lrbnn", "format_version": str(FORMAT_VERSION)})
    os.replace(tmp, weights)
    data = manifest.model_dump(mode="json") if isinstance(manifest, Manifest) else dict(manifest)
    data["sha256"] = sha256_file(weights)
    data["parameter_count"] = model.parameter_count()
    data.setdefault("format_version", FORMAT_VERSION)
    final = Manifest.model_validate(data)
    write_manifest(out, final)
    return final


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


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Verify everything, then return the model (in eval state, on ``device``) and its manifest."""
    root = Path(directory)
    manifest = read_manifest(root)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise IntegrityError(f"{weights}: weights file missing")
    digest = sha256_file(weights)
    if digest != manifest.sha256:
        raise IntegrityError(f"{weights}: sha256 {digest} does not match the manifest's {manifest.sha256}")
    try:
        model = build_model(manifest.architecture)
    except (UnknownArchitectureError, ValueError) as exc:
        raise ManifestError(f"{root}: architecture cannot be built: {exc}") from None
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise IntegrityError(f"{weights}: not a readable safetensors file ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or unexpected:
        raise TensorMismatchError(
            f"{weights}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
        )
    wrong = [
        f"{k}: file {got[k]} vs architecture {expected[k]}" for k in sorted(expected) if got[k] != expected[k]
    ]
    if wrong:
        raise TensorMismatchError(f"{weights}: wrong shapes: {'; '.join(wrong[:5])}")
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise IntegrityError(f"{weights}: non-finite values in {bad[:5]}")
    if manifest.parameter_count != model.parameter_count():
        raise ManifestError(
            f"{root}: parameter_count {manifest.parameter_count} != architecture's {model.parameter_count()}"
        )
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    return LoadedCheckpoint(model, manifest, root)
