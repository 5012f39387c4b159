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

    # -- splitting rows: the one place (predict, the plan, the LSTM and the Transformer use these) ------
    def blocks(self) -> list[tuple[int, int, NoiseSource]]:
        """Each block on its own: (first row, stop row, a one-block source of the same mode); the
        source itself when it has one block."""
        if self.single_block:
            return [(0, self._rows, self)]
        out, lo = [], 0
        for gen, size in zip(self.generators, self.block_sizes, strict=True):
            out.append((lo, lo + size, NoiseSource([gen], [size], rowwise=self.rowwise)))
            lo += size
        return out

    def chunks(self, max_rows: int, *, rowwise: bool | None = None) -> list[tuple[int, int, NoiseSource]]:
        """Row ranges of at most ``max_rows`` that keep each block whole, each with its own source:
        (first row, stop row, source). A whole block draws what it draws unsplit, whatever shares its
        range; a block larger than ``max_rows`` is split alone, its pieces drawing from its generator in
        turn (so its answer depends on ``max_rows``, never on the other blocks).

        ``rowwise``: the pieces' mode (default: this source's, and the source itself when everything
        fits in one range). The LSTM draws its chunks with ``rowwise=False`` (see ``models/lstm.py``).
        """
        mode = self.rowwise if rowwise is None else rowwise
        if self.generators and self._rows <= max_rows and mode == self.rowwise:
            return [(0, self._rows, self)]
        out: list[tuple[int, int, NoiseSource]] = []
        start, gens, sizes = 0, [], []  # type: ignore[var-annotated]
        pos = 0

        def flush() -> None:
            nonlocal start, gens, sizes
            if sizes:
                out.append((start, start + sum(sizes), NoiseSource(gens, sizes, rowwise=mode)))
                start += sum(sizes)
                gens, sizes = [], []

        for gen, size in zip(self.generators, self.block_sizes, strict=True):
            if size > max_rows:
                flush()
                for lo in range(0, size, max_rows):
                    n = min(max_rows, size - lo)
                    out.append((pos + lo, pos + lo + n, NoiseSource([gen], [n], rowwise=mode)))
                start = pos + size
            else:
                if sum(sizes) + size > max_rows:
                    flush()
                if not sizes:
                    start = pos
                gens.append(gen)
                sizes.append(size)
            pos += size
        flush()
        return out

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
