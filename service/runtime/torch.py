"""The torch runtime: ``model_core.predict`` with a per-example sampling backend.

Why not ``Backend.AUTO``: for a single noise block the ``auto`` rule may pick a scheme whose noise is
shared across rows (``factored``, ``lrt-a``), while a merged batch forces ``lrt``; a request would then
answer differently alone and batched. Pinning a per-example backend (``lrt`` on CPU, ``triton`` on CUDA
when registered, ``cached`` in cached mode) makes the batching identity hold by construction.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from model_core.checkpoint.manifest import Manifest, SamplingMode
from model_core.layers.base import BayesianModule
from model_core.predict import predict
from model_core.sampling.api import BACKENDS
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend
from service.runtime.base import Outputs

log = logging.getLogger("lrbnn.service.runtime")


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("LRBNN_DEVICE=cuda but no CUDA device is available")
    return torch.device(requested)


class TorchRuntime:
    def __init__(
        self,
        model: BayesianModule,
        manifest: Manifest,
        device: torch.device,
        sampling_mode: SamplingMode,
        max_samples: int,
    ) -> None:
        self.model = model
        self.manifest = manifest
        self.torch_device = device
        self.device = f"torch-{device.type}"
        self.sampling_mode = sampling_mode
        self.backend = self._fresh_backend(device)
        if sampling_mode is SamplingMode.CACHED:
            build = getattr(model, "build_cache", None)
            if build is None:
                log.warning(
                    "model %s has no cached sampling (method %s); serving fresh noise instead",
                    manifest.model_name,
                    manifest.architecture.method.value,
                )
                self.sampling_mode = SamplingMode.FRESH
            else:
                build(max_samples, NoiseSource.from_seed(manifest.calibration.cache_seed, 1, device))
                self.backend = Backend.CACHED

    @staticmethod
    def _fresh_backend(device: torch.device) -> Backend:
        if device.type == "cuda" and Backend.TRITON in BACKENDS:
            return Backend.TRITON
        return Backend.LRT

    def predict(self, x: np.ndarray, samples: int, seeds: list[int | None], block_sizes: list[int]) -> Outputs:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device)
        noise = NoiseSource.from_seeds(seeds, block_sizes, self.torch_device)
        pred = predict(self.model, xt, samples=samples, noise=noise, backend=self.backend)
        out: Outputs = {
            "mean": pred.mean.cpu().numpy(),
            "variance": pred.variance.cpu().numpy(),
            "epistemic": pred.epistemic.cpu().numpy(),
            "aleatoric": pred.aleatoric.cpu().numpy(),
            "ood_score": pred.ood_score.cpu().numpy(),
        }
        if pred.interval_low is not None and pred.interval_high is not None:
            out["interval_low"] = pred.interval_low.cpu().numpy()
            out["interval_high"] = pred.interval_high.cpu().numpy()
        return out
