"""Noise handed to a model as tensors (ONNX graph inputs) instead of drawn from generators.

``ExplicitNoise`` gives the predictive path caller-provided tensors in order; ``RecordingNoise`` draws real
noise while recording each request's shape and kind, which is how :mod:`model_core.export.onnx` finds a
model's noise layout by running its predictive path once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from model_core.sampling.noise import NoiseError, NoiseSource


class ExplicitNoise(NoiseSource):
    """Hands out caller-provided noise tensors, in order, instead of drawing from a generator.

    ``per_row`` and ``per_row_uniform`` return the next tensor (checked against the requested width and
    kind); ``shared`` raises because row-shared noise cannot be an (S, N, width) input.
    """

    def __init__(self, tensors: Sequence[Tensor], kinds: Sequence[str] | None = None) -> None:
        # No generators: the base class's state is replaced by the queue of tensors.
        self.generators = []
        self.block_sizes = []
        self.rowwise = False  # the caller's noise: never the serving mode's own draws
        self.tensors = list(tensors)
        self.kinds = None if kinds is None else list(kinds)
        self.position = 0

    @property
    def rows(self) -> int:
        return int(self.tensors[0].shape[1]) if self.tensors else 0

    @property
    def single_block(self) -> bool:
        return True  # the noise is per example, so merged blocks are already handled by the caller

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device if self.tensors else torch.device("cpu")

    def _next(self, width: int, kind: str) -> Tensor:
        i = self.position
        if i >= len(self.tensors):
            raise NoiseError(f"the predictive path asked for noise input {i}; only {len(self.tensors)} given")
        if self.kinds is not None and self.kinds[i] != kind:
            raise NoiseError(f"noise input {i} is {self.kinds[i]!r} but the model asked for {kind!r}")
        t = self.tensors[i]
        if t.shape[-1] != width:
            raise NoiseError(f"noise input {i} has width {t.shape[-1]} but the model asked for {width}")
        self.position += 1
        return t

    def per_row(self, samples: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return self._next(width, "normal").to(dtype)

    def per_row_uniform(self, samples: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return self._next(width, "uniform").to(dtype)

    def shared(self, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        raise NoiseError("row-shared noise cannot be exported; the export uses the per-example 'lrt' backend")

    def seeds(self, count: int = 1) -> Tensor:
        raise NoiseError("on-device RNG seeds cannot be exported; the export uses the 'lrt' backend")

    def check_exhausted(self) -> None:
        if self.position != len(self.tensors):
            raise NoiseError(f"{len(self.tensors)} noise inputs given but only {self.position} were used")


class RecordingNoise(ExplicitNoise):
    """Draws real noise of the requested shape and records (width, kind) of each request, in order."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        super().__init__([])
        self.n_rows = rows
        self.generator = torch.Generator().manual_seed(seed)
        self.record: list[tuple[tuple[int, int, int], str]] = []

    @property
    def rows(self) -> int:
        return self.n_rows

    def per_row(self, samples: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        self.record.append(((samples, self.n_rows, width), "normal"))
        return torch.randn((samples, self.n_rows, width), generator=self.generator, dtype=dtype)

    def per_row_uniform(self, samples: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        self.record.append(((samples, self.n_rows, width), "uniform"))
        return torch.rand((samples, self.n_rows, width), generator=self.generator, dtype=dtype)
