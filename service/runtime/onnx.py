"""The onnxruntime backend (``LRBNN_BACKEND=onnx``): an adapter over ``model_core.export.onnx_runtime``.

The predictor (``OnnxPredictor(onnx_path, manifest).predict(x, samples, seeds, block_sizes)``) belongs to
the ONNX export work and imports neither torch nor training code; this module finds
``<version>/model.onnx``, passes the batching mode through, and turns an absent file, an absent
implementation or a stale graph into a :class:`RuntimeLoadError` naming what is wrong.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from model_core.checkpoint.manifest import Manifest
from service.runtime.base import Outputs, RuntimeLoadError

ONNX_FILE = "model.onnx"
#: The torch-free predictor. Only this module: ``model_core.export.onnx`` re-exports the class but
#: imports torch, and it imports this module anyway, so it could never help when this one fails.
PREDICTOR_MODULE = "model_core.export.onnx_runtime"


def _predictor_class() -> Any:
    """Imported on first use, so the torch backend runs where onnxruntime is not installed."""
    try:
        return importlib.import_module(PREDICTOR_MODULE).OnnxPredictor
    except (ImportError, AttributeError) as exc:
        raise RuntimeLoadError(
            f"the onnx backend is not available ({PREDICTOR_MODULE}: {exc}; install the 'onnx' extra)"
        ) from None


class OnnxRuntime:
    """The service's runtime contract over an ``OnnxPredictor``."""

    def __init__(self, predictor: Any, exact: bool) -> None:
        self.predictor = predictor
        self.exact = exact
        self.device = str(getattr(predictor, "device", "onnxruntime"))

    def predict(
        self, x: np.ndarray, samples: int, seeds: list[int | None], block_sizes: list[int]
    ) -> Outputs:
        out: Outputs = self.predictor.predict(x, samples, seeds, block_sizes, merge=not self.exact)
        return out


def build_onnx_runtime(version_dir: Path, manifest: Manifest, exact: bool = True) -> OnnxRuntime:
    path = version_dir / ONNX_FILE
    if not path.is_file():
        raise RuntimeLoadError(f"{path}: no ONNX graph (run `lrbnn export-onnx {version_dir} {path}`)")
    predictor_cls = _predictor_class()
    try:
        predictor = predictor_cls(path, manifest)
    except (ValueError, OSError) as exc:  # OnnxRuntimeError is a ValueError: unreadable or stale graph
        raise RuntimeLoadError(str(exc)) from None
    return OnnxRuntime(predictor, exact)
