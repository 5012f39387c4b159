"""The onnxruntime backend (``LRBNN_BACKEND=onnx``): a thin adapter over ``model_core.export.onnx``.

The predictor itself (``OnnxPredictor(onnx_path, manifest).predict(x, samples, seeds, block_sizes)``)
belongs to the ONNX export work; this module only finds ``<version>/model.onnx`` and turns an absent
file or an absent implementation into a :class:`RuntimeLoadError` naming what is missing.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from model_core.checkpoint.manifest import Manifest
from service.runtime.base import Runtime, RuntimeLoadError

ONNX_FILE = "model.onnx"


def build_onnx_runtime(version_dir: Path, manifest: Manifest) -> Runtime:
    path = version_dir / ONNX_FILE
    if not path.is_file():
        raise RuntimeLoadError(f"{path}: no ONNX graph (run `lrbnn export-onnx {version_dir} {path}`)")
    try:
        module = importlib.import_module("model_core.export.onnx")
        predictor_cls = module.OnnxPredictor
    except (ImportError, AttributeError) as exc:
        raise RuntimeLoadError(f"the onnx backend is not available: {exc}") from None
    predictor = predictor_cls(path, manifest)
    if not hasattr(predictor, "device"):
        predictor.device = "onnxruntime"
    return predictor  # type: ignore[no-any-return]
