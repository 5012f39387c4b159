"""MLServer 1.7 custom runtime serving an lrbnn checkpoint, for ``benchmarks/serve_load.py``.

It does the same work per instance as ``lrbnn serve``'s V2 infer endpoint, so the comparison measures
the servers, not different models:

* input: one FP32 tensor ``features`` of shape [N, F], raw units, columns in the manifest's feature
  order, a categorical column carrying the category index, ``null``/NaN = missing (imputed);
* preprocessing: ``Preprocessor.from_dict(manifest.input_schema.preprocessing).transform(rows)`` on
  named rows, exactly as the service builds them from a V2 tensor;
* model: ``model_core.checkpoint.load_checkpoint`` (sha256 and shapes verified);
* prediction: the service's own pass, ``model_core.plan.RowwisePlan`` (the ``lrt`` backend frozen at
  load, per-request noise), where the model has one (the ICU MLP does); otherwise
  ``model_core.predict.predict(model, x, samples=S, seed=..., backend="lrt")``, the per-example CPU
  sampling backend the service pins (``auto`` could pick a cheaper row-shared scheme and make the
  competitor do less work);
* outputs: ``mean``, ``variance``, ``epistemic``, ``ood_score`` (FP32) and ``ood`` (BOOL), the
  service's default V2 outputs.

With MLServer's adaptive batching on, the merged requests reach ``predict`` as one [B, F] tensor and
run as one network pass (MLServer has no notion of per-request noise blocks).

``parameters.extra`` in ``model-settings.json``: ``samples`` (default 128); ``parameters.uri``: the
checkpoint directory (``<model>/<version>``). ``LRBNN_BENCH_CHECKPOINT`` / ``LRBNN_BENCH_SAMPLES``
override both (the benchmark sets them).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from model_core.checkpoint import load_checkpoint
from model_core.data.preprocessing import Preprocessor
from model_core.plan import RowwisePlan
from model_core.predict import predict
from model_core.sampling.noise import NoiseSource

DEFAULT_SAMPLES = 128


class LrbnnRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra: dict[str, Any] = dict(getattr(params, "extra", None) or {}) if params else {}
        uri = os.environ.get("LRBNN_BENCH_CHECKPOINT") or (params.uri if params else None)
        if not uri:
            raise ValueError("no checkpoint: set parameters.uri or LRBNN_BENCH_CHECKPOINT")
        self.samples = int(os.environ.get("LRBNN_BENCH_SAMPLES") or extra.get("samples", DEFAULT_SAMPLES))
        ckpt = load_checkpoint(uri, device="cpu")
        self.model = ckpt.model
        self.manifest = ckpt.manifest
        self.preprocessor = Preprocessor.from_dict(ckpt.manifest.input_schema.preprocessing)
        self.specs = list(self.preprocessor.features)
        self.threshold = float(ckpt.manifest.calibration.ood_threshold)
        self.plan = RowwisePlan.build(self.model) if RowwisePlan.supports(self.model) else None
        # warm-up, as the service does before it turns ready
        warm = self._predict(np.full((1, len(self.specs)), np.nan), seed=0)
        if not np.isfinite(warm["mean"]).all():
            raise ValueError("warm-up prediction is not finite")
        return True

    def _rows(self, x: np.ndarray) -> list[dict[str, Any]]:
        rows = []
        for values in x.tolist():
            row: dict[str, Any] = {}
            for spec, v in zip(self.specs, values, strict=True):
                if math.isnan(v):
                    continue
                if spec.kind == "categorical":
                    cats = spec.categories or []
                    if not (float(v).is_integer() and 0 <= v < len(cats)):
                        raise ValueError(f"feature {spec.name!r}: category index {v!r} out of range")
                    row[spec.name] = cats[int(v)]
                else:
                    row[spec.name] = v
            rows.append(row)
        return rows

    def _predict(self, x: np.ndarray, seed: int | None) -> dict[str, np.ndarray]:
        features, _imputed = self.preprocessor.transform(self._rows(x))
        xt = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if self.plan is not None:  # the batch as one noise block: one pass, as MLServer's batching does
            pred = self.plan.predict(xt, self.samples, NoiseSource.from_seeds([seed], [xt.shape[0]]))
        else:
            pred = predict(self.model, xt, samples=self.samples, seed=seed, backend="lrt")  # inference_mode
        return {
            "mean": pred.mean.numpy(),
            "variance": pred.variance.numpy(),
            "epistemic": pred.epistemic.numpy(),
            "ood_score": pred.ood_score.numpy(),
        }

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise ValueError("expected exactly one input tensor 'features'")
        inp = payload.inputs[0]
        n_features = len(self.specs)
        data = inp.data.root if hasattr(inp.data, "root") else inp.data
        x = np.asarray(data, dtype=np.float64).reshape(-1, n_features)  # JSON null -> NaN (missing)
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
