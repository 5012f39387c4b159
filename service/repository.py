"""The model repository ``<root>/<model>/<version>/``: discover, load, verify, warm up, hot reload.

A model is served only after its checkpoint verified (manifest, sha256, tensor shapes), its
preprocessing parsed and one warm-up prediction came back finite; a reload builds the new version
completely beside the old one and swaps only on success, so a bad upload never interrupts serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_core.checkpoint import CheckpointError, Manifest, SamplingMode, read_manifest
from model_core.checkpoint.files import load_novelty
from model_core.novelty import NoveltyDetector
from service.errors import ModelNotFound, ReloadFailed
from service.inputs import InputAdapter, build_adapter
from service.runtime.base import Runtime, RuntimeLoadError
from service.settings import BackendName, Settings

log = logging.getLogger("lrbnn.service.repository")

WARMUP_SEED = 0


class ModelLoadError(RuntimeError):
    """A version directory that must not be served; the message says which check failed."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified and warmed-up model version: everything a request needs, immutable."""

    name: str
    version: str
    path: Path
    manifest: Manifest
    inputs: InputAdapter
    runtime: Runtime
    sampling_mode: SamplingMode
    default_samples: int
    #: the verified input-novelty detector (None for a checkpoint calibrated without one)
    novelty: NoveltyDetector | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def stores_features(self) -> bool:
        return self.inputs.stores_features

    @property
    def ood_threshold(self) -> float:
        return self.manifest.calibration.ood_threshold


def version_key(version: str) -> tuple[bool, int, str]:
    """Numeric versions sort numerically (``10`` after ``9``) and above non-numeric names."""
    return (version.isdigit(), int(version) if version.isdigit() else 0, version)


def _build_torch(path: Path, settings: Settings, mode: SamplingMode) -> tuple[Manifest, Runtime]:
    from model_core.checkpoint.io import load_checkpoint  # torch: only this backend needs it
    from service.runtime.torch import TorchRuntime, resolve_device

    device = resolve_device(settings.device.value)
    ckpt = load_checkpoint(path, device)
    runtime = TorchRuntime(
        ckpt.model, ckpt.manifest, device, mode, settings.max_samples, exact=settings.batch_exact
    )
    return ckpt.manifest, runtime


def _build_onnx(path: Path, settings: Settings, mode: SamplingMode) -> tuple[Manifest, Runtime]:
    from service.runtime.onnx import build_onnx_runtime

    manifest = read_manifest(path)
    return manifest, build_onnx_runtime(path, manifest, exact=settings.batch_exact)


RuntimeBuilder = Callable[[Path, Settings, SamplingMode], tuple[Manifest, Runtime]]

#: How each ``LRBNN_BACKEND`` turns a version directory into a verified manifest and a runtime.
RUNTIME_BUILDERS: dict[BackendName, RuntimeBuilder] = {
    BackendName.TORCH: _build_torch,
    BackendName.ONNX: _build_onnx,
}


class ModelRepository:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.model_repository)
        self._models: dict[str, ServedModel] = {}
        self.errors: dict[str, str] = {}
        self._reload_lock = threading.Lock()

    # -- discovery -----------------------------------------------------------------------------
    def discover(self) -> dict[str, list[str]]:
        """Model name -> its version directories, oldest first."""
        if not self.root.is_dir():
            return {}
        found: dict[str, list[str]] = {}
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = [v.name for v in model_dir.iterdir() if v.is_dir() and not v.name.startswith(".")]
            if versions:
                found[model_dir.name] = sorted(versions, key=version_key)
        return found

    def newest_version(self, name: str) -> str:
        versions = self.discover().get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not in the repository", field="name")
        return versions[-1]

    # -- loading -------------------------------------------------------------------------------
    def build(self, name: str, version: str) -> ServedModel:
        """Load, verify and warm up ``<root>/<name>/<version>`` without serving it yet."""
        path = self.root / name / version
        if not path.is_dir():
            raise ModelLoadError(f"{path}: no such version directory")
        mode = self.settings.sampling_mode
        try:
            manifest = read_manifest(path)
            mode = mode or manifest.calibration.sampling_mode
            manifest, runtime = RUNTIME_BUILDERS[self.settings.backend](path, self.settings, mode)
            novelty = load_novelty(path, manifest)  # numpy only: the same for every backend
        except (CheckpointError, RuntimeLoadError, OSError, RuntimeError) as exc:
            raise ModelLoadError(str(exc)) from exc
        if manifest.model_name != name or manifest.model_version != version:
            raise ModelLoadError(
                f"{path}: manifest says {manifest.model_name}/{manifest.model_version}, "
                f"directory says {name}/{version}"
            )
        try:
            inputs = build_adapter(manifest.input_schema)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"{path}: invalid input_schema (kind {manifest.input_schema.kind!r}): {exc}"
            ) from exc
        default = min(
            self.settings.default_samples or manifest.calibration.default_samples, self.settings.max_samples
        )
        served = ServedModel(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            inputs=inputs,
            runtime=runtime,
            sampling_mode=getattr(runtime, "sampling_mode", mode),
            default_samples=default,
            novelty=novelty,
        )
        self.warm_up(served)
        return served

    @staticmethod
    def warm_up(served: ServedModel) -> None:
        """One prediction on an all-imputed (or empty) instance: loads kernels, proves outputs finite."""
        x = served.inputs.encode(served.inputs.warmup_instances()).x
        t0 = time.perf_counter()
        out = served.runtime.predict(x, served.default_samples, [WARMUP_SEED], [1])
        bad = [k for k, v in out.items() if not np.isfinite(v).all()]
        if bad:
            raise ModelLoadError(f"{served.path}: warm-up prediction is not finite in {bad}")
        warmup_ms = round((time.perf_counter() - t0) * 1000, 2)
        check = getattr(served.runtime, "check_batch_invariance", None)
        merged = bool(check(x, served.default_samples)) if check is not None else False
        log.info(
            "model loaded",
            extra={
                "model": served.name,
                "version": served.version,
                "sampling_mode": served.sampling_mode.value,
                "device": served.runtime.device,
                "warmup_ms": warmup_ms,
                "exact_merged_batches": merged,
            },
        )

    def load_all(self) -> None:
        """Serve the newest version of every model; a model that fails is recorded in ``errors``."""
        found = self.discover()
        if not found:
            log.warning("no model found; /readyz stays 503", extra={"repository": str(self.root)})
        for name, versions in found.items():
            try:
                self._models[name] = self.build(name, versions[-1])
                self.errors.pop(name, None)
            except ModelLoadError as exc:
                self.errors[name] = str(exc)
                log.error("model failed to load", extra={"model": name, "error": str(exc)})

    def reload(self, name: str, version: str | None = None) -> ServedModel:
        """Build the requested (default: newest) version and swap it in; the old one serves on failure."""
        if name not in self._models and name not in self.discover():
            raise ModelNotFound(f"model {name!r} is not in the repository", field="name")
        with self._reload_lock:
            target = version or self.newest_version(name)
            try:
                served = self.build(name, target)
            except ModelLoadError as exc:
                old = self._models.get(name)
                still = f"; still serving version {old.version}" if old else ""
                log.error(
                    "model reload refused",
                    extra={
                        "model": name,
                        "version": target,
                        "error": str(exc),
                        "serving": old.version if old else None,
                    },
                )
                raise ReloadFailed(f"reload of {name}/{target} refused: {exc}{still}") from exc
            self._models[name] = served
            self.errors.pop(name, None)
            return served

    # -- lookup --------------------------------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(f"model {name!r} is not served", field="name") from None

    def version_of(self, name: str) -> str | None:
        """The version of ``name`` being served, or None."""
        served = self._models.get(name)
        return None if served is None else served.version

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a served model (O(1): checked on every request)."""
        return name in self._models

    def models(self) -> list[ServedModel]:
        return [self._models[k] for k in sorted(self._models)]

    @property
    def ready(self) -> bool:
        return bool(self._models) and not self.errors
