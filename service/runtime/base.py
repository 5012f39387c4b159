"""The runtime contract: raw model inputs in, per-example predictive summaries out (numpy, no torch).

A runtime hides how S Monte Carlo samples are computed (torch on CPU/CUDA, onnxruntime). ``seeds`` and
``block_sizes`` describe the merged requests of one batch: block i (``block_sizes[i]`` consecutive rows)
draws its noise from ``seeds[i]``, so each request's answer does not depend on its batch neighbours.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

Outputs = dict[str, np.ndarray]


class RuntimeLoadError(RuntimeError):
    """A runtime could not be built for a checkpoint (missing file, backend not installed)."""


@runtime_checkable
class Runtime(Protocol):
    #: Human-readable device/backend, exported as the ``device`` label of ``lrbnn_model_info``.
    device: str

    def predict(
        self, x: np.ndarray, samples: int, seeds: list[int | None], block_sizes: list[int]
    ) -> Outputs: ...
