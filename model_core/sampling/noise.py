"""Where the Monte Carlo noise comes from.

A batch handed to the sampling op may merge rows from several requests (dynamic batching). Each block of
rows draws its per-example noise from its own generator, in the same order whether it runs alone or
merged, so a request's answer never depends on what it was batched with. Schemes whose noise is shared
across rows (one weight draw per sample, e.g. ``factored``) are only valid with a single block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class NoiseError(ValueError):
    """A sampling scheme asked for noise that this source cannot give reproducibly."""


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with ``seed`` (or from the global RNG when ``None``)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


class NoiseSource:
    """Gaussian noise for S samples over N rows, split into blocks that each own a generator."""

    def __init__(
        self, generators: Sequence[torch.Generator], block_sizes: Sequence[int], *, rowwise: bool = False
    ) -> None:
        if len(generators) != len(block_sizes) or not generators:
            raise ValueError("need one generator per block and at least one block")
        if any(b < 0 for b in block_sizes):
            raise ValueError("block sizes must be non-negative")
        if len(generators) > 1 and not rowwise:
            raise ValueError("a noise source of several blocks (merged requests) must be rowwise=True")
        self.generators = list(generators)
        self.block_sizes = [int(b) for b in block_sizes]
        #: The serving mode, chosen where the source is made (``from_seeds``: per-request noise), and
        #: everything it selects: ``auto`` picks only per-example schemes (``backends.choose_backend``),
        #: the CPU ``lrt`` kernels take their row-wise passes (``cpu.rowwise``), and :func:`predict`
        #: summarises row by row (``summarize(..., rowwise=True)``), so a block's answer is bitwise the
        #: same alone or merged; off (``from_seed``: evaluation, benchmarks), the vectorised passes and
        #: summaries, faster at large N and what the recorded metrics were computed with.
        self.rowwise = rowwise
        # fixed at construction and read on every draw (a served request draws ~5 times)
        self._rows = sum(self.block_sizes)
        self._device = self.generators[0].device

    @classmethod
    def from_seed(cls, seed: int | None, rows: int, device: torch.device | str = "cpu") -> NoiseSource:
        return cls([make_generator(seed, device)], [rows])

    @classmethod
    def from_seeds(
        cls, seeds: Sequence[int | None], block_sizes: Sequence[int], device: torch.device | str = "cpu"
    ) -> NoiseSource:
        return cls([make_generator(s, device) for s in seeds], block_sizes, rowwise=True)

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def single_block(self) -> bool:
        return len(self.generators) == 1

    @property
    def device(self) -> torch.device:
        return self._device

    def per_row(self, samples: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Noise of shape (S, N, width), rows drawn block by block from their own generators."""
        if len(self.generators) == 1:
            return torch.randn(
                (samples, self._rows, width), generator=self.generators[0], dtype=dtype, device=self._device
            )
        parts = [
            torch.randn((samples, b, width), generator=g, dtype=dtype, device=self.device)
            for g, b in zip(self.generators, self.block_sizes, strict=True)
        ]
        return torch.cat(parts, dim=1)

    def per_row_uniform(self, samples: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform(0, 1) noise of shape (S, N, width) (MC-dropout masks), block by block."""
        parts = [
            torch.rand((samples, b, width), generator=g, dtype=dtype, device=self.device)
            for g, b in zip(self.generators, self.block_sizes, strict=True)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def shared(self, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Noise shared by all rows (one weight draw per sample): only reproducible with one block."""
        if not self.single_block:
            raise NoiseError("row-shared noise needs a single-block noise source; use a per-example scheme")
        return torch.randn(shape, generator=self.generators[0], dtype=dtype, device=self.device)

    def seeds(self, count: int = 1) -> Tensor:
        """Per-row 63-bit seeds (int64, shape (N, count)) for on-device RNGs such as Triton's Philox."""
        parts = [
            torch.randint(0, 2**62, (b, count), generator=g, dtype=torch.int64, device=self.device)
            for g, b in zip(self.generators, self.block_sizes, strict=True)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
