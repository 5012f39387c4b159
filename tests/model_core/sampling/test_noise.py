"""The noise source: its mode, and splitting rows into blocks and chunks (the one place that does it)."""

from __future__ import annotations

import pytest
import torch

from model_core.sampling.noise import NoiseSource, make_generator


def _source(sizes: list[int], rowwise: bool = True) -> NoiseSource:
    return NoiseSource([make_generator(10 + i) for i in range(len(sizes))], sizes, rowwise=rowwise)


def _draw(chunks: list[tuple[int, int, NoiseSource]], samples: int = 3, width: int = 2) -> torch.Tensor:
    return torch.cat([sub.per_row(samples, width) for _, _, sub in chunks], dim=1)


def test_the_mode_is_chosen_where_the_source_is_made():
    assert NoiseSource.from_seeds([1, 2], [2, 3]).rowwise
    assert NoiseSource.from_seeds([1], [4]).rowwise  # one request, served: still the serving mode
    assert not NoiseSource.from_seed(1, 4).rowwise
    with pytest.raises(ValueError, match="several blocks"):
        _source([2, 3], rowwise=False)


def test_chunks_keep_blocks_whole_and_split_a_large_one_alone():
    noise = _source([2, 3, 7, 1])
    got = noise.chunks(5)
    assert [(lo, hi, sub.block_sizes) for lo, hi, sub in got] == [
        (0, 5, [2, 3]),
        (5, 10, [5]),
        (10, 12, [2]),
        (12, 13, [1]),
    ]
    assert all(sub.rowwise for _, _, sub in got)
    # whole blocks draw what they draw unsplit; the pieces of the 7-row block draw from its generator
    # in turn, the same for the same max_rows whatever else is in the batch
    split, whole = _draw(got), _source([2, 3, 7, 1]).per_row(3, 2)
    assert torch.equal(split[:, :5], whole[:, :5]) and torch.equal(split[:, 12:], whole[:, 12:])
    assert not torch.equal(split[:, 5:12], whole[:, 5:12])
    assert torch.equal(_draw(_source([2, 3, 7, 1]).chunks(5)), split)


def test_a_source_that_fits_is_its_own_chunk_unless_the_mode_changes():
    noise = _source([4], rowwise=True)
    assert noise.chunks(8) == [(0, 4, noise)]
    ((lo, hi, sub),) = noise.chunks(8, rowwise=False)
    assert (lo, hi, sub.rowwise) == (0, 4, False) and sub is not noise
    assert torch.equal(sub.per_row(2, 3), _source([4]).per_row(2, 3))


def test_blocks_are_one_block_sources_of_the_same_mode():
    noise = _source([2, 0, 3])
    got = noise.blocks()
    assert [(lo, hi, sub.block_sizes, sub.rowwise) for lo, hi, sub in got] == [
        (0, 2, [2], True),
        (2, 2, [0], True),
        (2, 5, [3], True),
    ]
    single = NoiseSource.from_seed(3, 4)
    assert single.blocks() == [(0, 4, single)]
