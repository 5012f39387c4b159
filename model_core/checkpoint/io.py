"""Save, verify and load checkpoints: ``weights.safetensors`` + ``manifest.json``; nothing is unpickled.

Loading checks, in order: the manifest parses and its format version is supported; the weights file's
sha256 equals the manifest's; the architecture builds; the file's tensor names and shapes are exactly the
architecture's. Any mismatch raises a :class:`CheckpointError` subclass naming what is wrong.
The torch-free half (errors, manifest read/write, sha256) is :mod:`model_core.checkpoint.files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model_core.checkpoint.files import (
    WEIGHTS_FILE,
    IntegrityError,
    ManifestError,
    TensorMismatchError,
    load_novelty,
    read_manifest,
    sha256_file,
    verify_weights,
    write_manifest,
)
from model_core.checkpoint.manifest import FORMAT_VERSION, Manifest
from model_core.layers.base import BayesianModule
from model_core.models.registry import UnknownArchitectureError, build_model
from model_core.novelty import NoveltyDetector

# ``sha256_file`` and ``write_manifest`` (now in ``files``) stay importable from here, as callers do.
__all__ = ["LoadedCheckpoint", "load_checkpoint", "save_checkpoint", "sha256_file", "write_manifest"]


@dataclass
class LoadedCheckpoint:
    model: BayesianModule
    manifest: Manifest
    path: Path
    #: the verified input-novelty detector (None for a checkpoint without one)
    novelty: NoveltyDetector | None = None


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


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Verify everything, then return the model (in eval state, on ``device``) and its manifest."""
    root = Path(directory)
    manifest = read_manifest(root)
    weights = verify_weights(root, manifest)
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
    novelty = load_novelty(root, manifest)
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    return LoadedCheckpoint(model, manifest, root, novelty)
