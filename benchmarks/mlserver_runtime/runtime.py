"""MLServer 1.7 custom runtime serving an lrbnn checkpoint, for ``benchmarks/serve_load.py``.

It does the same work per instance as ``lrbnn serve``'s V2 infer endpoint, so the comparison measures
the servers, not different models:

* input: one FP32 tensor ``features`` of shape [N, F], raw units, columns in the manifest's feature
  order, a categorical column carrying the category index, ``null``/NaN = missing (imputed);
* preprocessing: the service's own code, ``Preprocessor.from_dict(manifest.input_schema.preprocessing)
  .transform_matrix(x)`` (the V2 tensor's matrix transform that the service's tabular adapter runs);
* model: ``model_core.checkpoint.load_checkpoint`` (sha256 and shapes verified);
* prediction: the service's own runtime, ``service.runtime.torch.TorchRuntime`` (fresh noise, the
  ``lrt`` backend on the CPU, its row-wise plan where the model has one, as the ICU MLP does), with the
  whole batch as one noise block: MLServer has no notion of per-request noise blocks;
* outputs: ``mean``, ``variance``, ``epistemic``, ``ood_score`` (FP32) and ``ood`` (BOOL), the
  service's default V2 outputs.

With MLServer's adaptive batching on, the merged requests reach ``predict`` as one [B, F] tensor and
run as one network pass (MLServer has no notion of per-request noise blocks).

``parameters.extra`` in ``model-settings.json``: ``samples`` (default 128); ``parameters.uri``: the
checkpoint directory (``<model>/<version>``). ``LRBNN_BENCH_CHECKPOINT`` / ``LRBNN_BENCH_SAMPLES``
override both (the benchmark sets them).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from model_core.checkpoint import load_checkpoint
from model_core.checkpoint.manifest import SamplingMode
from model_core.data.preprocessing import Preprocessor
from service.runtime.torch import TorchRuntime

DEFAULT_SAMPLES = 128
OUTPUTS = ("mean", "variance", "epistemic", "ood_score")


class LrbnnRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra: dict[str, Any] = dict(getattr(params, "extra", None) or {}) if params else {}
        uri = os.environ.get("LRBNN_BENCH_CHECKPOINT") or (params.uri if params else None)
        if not uri:
            raise ValueError("no checkpoint: set parameters.uri or LRBNN_BENCH_CHECKPOINT")
        self.samples = int(os.environ.get("LRBNN_BENCH_SAMPLES") or extra.get("samples", DEFAULT_SAMPLES))
        ckpt = load_checkpoint(uri, device="cpu")
        self.manifest = ckpt.manifest
        self.preprocessor = Preprocessor.from_dict(ckpt.manifest.input_schema.preprocessing)
        self.n_features = len(self.preprocessor.features)
        self.threshold = float(ckpt.manifest.calibration.ood_threshold)
        self.runtime = TorchRuntime(
            ckpt.model, ckpt.manifest, torch.device("cpu"), SamplingMode.FRESH, max_samples=self.samples
        )
        # warm-up, as the service does before it turns ready
        warm = self._predict(np.full((1, self.n_features), np.nan), seed=0)
        if not np.isfinite(warm["mean"]).all():
            raise ValueError("warm-up prediction is not finite")
        return True

    def _predict(self, x: np.ndarray, seed: int | None) -> dict[str, np.ndarray]:
        features, _imputed, _flagged = self.preprocessor.transform_matrix(x)
        out = self.runtime.predict(features, self.samples, [seed], [int(features.shape[0])])
        return {k: out[k] for k in OUTPUTS}

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise ValueError("expected exactly one input tensor 'features'")
        inp = payload.inputs[0]
        data = inp.data.root if hasattr(inp.data, "root") else inp.data
        x = np.asarray(data, dtype=np.float64).reshape(-1, self.n_features)  # JSON null -> NaN (missing)
        seed = None
        if payload.parameters is not None:
            extra = payload.parameters.model_extra or {}
            if isinstance(extra.get("seed"), int):
                seed = int(extra["seed"])
        out = self._predict(x, seed)
        ood = out["ood_score"] > self.threshold
        n = int(x.shape[0])
        outputs = [
            ResponseOutput(name=k, datatype="FP32", shape=[n], data=v.astype(np.float32).ravel().tolist())
            for k, v in out.items()
        ]
        outputs.append(ResponseOutput(name="ood", datatype="BOOL", shape=[n], data=ood.ravel().tolist()))
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs
        )
