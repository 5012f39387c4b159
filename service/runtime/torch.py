"""The torch runtime: ``model_core.predict`` with a per-example sampling backend.

Why a pinned backend rather than ``Backend.AUTO``: a row-shared scheme (``factored``, ``lrt-a``) would
give a request different noise alone than merged; the service pins a per-example one (``lrt`` on CPU,
``triton`` on CUDA when it registers, ``cached`` in cached mode) so the batching identity never depends
on the cost model's choice (``NoiseSource.from_seeds`` also restricts ``auto`` to such schemes).

Same noise is not yet the same bits: BLAS picks different kernels for matrices of different heights
(a 1-row GEMV versus a 200-row GEMM), so one plain network pass over a merged batch rounds some outputs
one float32 ulp differently than the request alone (seen as ~1e-6 relative changes in the mutual
information). Two modes, chosen by ``LRBNN_BATCH_EXACT``:

* exact (default): answers are bit-identical to the request alone. Where the model and backend are
  batch invariant (``model_core.predict.batch_invariant``: a low-rank / mean-field MLP with the ``lrt``
  backend on the CPU, whose pass computes every row with shapes that do not depend on the batch) that
  is ONE network pass over the merged batch; otherwise the batch runs one network pass per request
  inside the same dispatch, the very call the request makes alone (batching then still saves queueing
  and thread hand-offs).
* merged: one network pass for the whole batch whatever the model (about 2x the throughput at 32
  concurrent one-row requests on 2 CPU cores for a model without a batch-invariant pass); answers equal
  the lone ones up to float32 rounding.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from model_core.checkpoint.manifest import Manifest, SamplingMode
from model_core.layers.base import BayesianModule
from model_core.plan import RowwisePlan
from model_core.predict import DEFAULT_CHUNK_ELEMENTS, Prediction, batch_invariant, predict
from model_core.sampling.backends import register_triton_backend
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


def _numpy(pred: Prediction) -> Outputs:
    return {
        "mean": pred.mean.cpu().numpy(),
        "variance": pred.variance.cpu().numpy(),
        "epistemic": pred.epistemic.cpu().numpy(),
        "aleatoric": pred.aleatoric.cpu().numpy(),
        "ood_score": pred.ood_score.cpu().numpy(),
    }


class TorchRuntime:
    def __init__(
        self,
        model: BayesianModule,
        manifest: Manifest,
        device: torch.device,
        sampling_mode: SamplingMode,
        max_samples: int,
        exact: bool = True,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        self.model = model
        self.manifest = manifest
        self.torch_device = device
        self.device = f"torch-{device.type}"
        self.sampling_mode = sampling_mode
        self.backend = self._fresh_backend(device)
        self.exact = exact
        self.chunk_elements = chunk_elements
        if sampling_mode is SamplingMode.CACHED:
            build = getattr(model, "build_cache", None)
            if build is None:
                log.warning(
                    "no cached sampling for this architecture; serving fresh noise instead",
                    extra={"model": manifest.model_name, "method": manifest.architecture.method.value},
                )
                self.sampling_mode = SamplingMode.FRESH
            else:
                build(max_samples, NoiseSource.from_seed(manifest.calibration.cache_seed, 1, device))
                self.backend = Backend.CACHED
        #: one pass over a merged batch gives each request the bits it gets alone
        self.batch_invariant = batch_invariant(model, self.backend, device)
        #: the same pass frozen at load (no per-request walk over the modules); None: ``predict``
        self.plan = RowwisePlan.build(model) if self.batch_invariant else None

    @staticmethod
    def _fresh_backend(device: torch.device) -> Backend:
        if device.type == "cuda" and register_triton_backend():
            return Backend.TRITON
        return Backend.LRT

    def predict(
        self, x: np.ndarray, samples: int, seeds: list[int | None], block_sizes: list[int]
    ) -> Outputs:
        # token ids (text models) stay integers; everything else is float32
        dtype = np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)).to(self.torch_device)
        if not self.exact or len(block_sizes) == 1 or self.batch_invariant:
            return _numpy(self._run(xt, samples, seeds, block_sizes))
        parts, lo = [], 0
        for seed, size in zip(seeds, block_sizes, strict=True):
            # a fresh (aligned) copy: BLAS results can depend on the data pointer's alignment
            parts.append(self._run(xt[lo : lo + size].clone(), samples, [seed], [size]))
            lo += size
        return _numpy(Prediction.concat(parts))

    def check_batch_invariance(self, row: np.ndarray, samples: int) -> bool:
        """Prove on this machine, at load, that one pass over a merged batch gives every request the
        bits it gets alone; if not (another CPU or BLAS build may round differently), fall back to one
        pass per request, with a warning. Returns whether merged passes are used."""
        if not (self.exact and self.batch_invariant) or np.issubdtype(row.dtype, np.integer):
            return self.batch_invariant and self.exact
        rng = np.random.default_rng(0)
        x = (np.repeat(row[:1], 7, axis=0) + rng.normal(0.0, 0.5, (7, row.shape[1]))).astype(np.float32)
        seeds: list[int | None] = [11, 12, 13, 14]
        sizes = [1, 3, 2, 1]
        xt = torch.from_numpy(x).to(self.torch_device)
        merged = _numpy(self._run(xt, samples, seeds, sizes))
        lo = 0
        for seed, size in zip(seeds, sizes, strict=True):
            alone = _numpy(self._run(xt[lo : lo + size].clone(), samples, [seed], [size]))
            if any(not np.array_equal(alone[k], merged[k][lo : lo + size]) for k in alone):
                self.batch_invariant = False
                log.warning(
                    "merged batches are not bit-identical to lone requests on this machine; "
                    "exact mode runs one network pass per request",
                    extra={"model": self.manifest.model_name},
                )
                return False
            lo += size
        return True

    def _run(self, xt: torch.Tensor, samples: int, seeds: list[int | None], sizes: list[int]) -> Prediction:
        noise = NoiseSource.from_seeds(seeds, sizes, self.torch_device)
        return predict(
            self.plan or self.model,
            xt,
            samples,
            noise=noise,
            backend=self.backend,
            chunk_elements=self.chunk_elements,
        )
