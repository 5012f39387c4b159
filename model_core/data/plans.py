"""The fitted constants of a :class:`~model_core.data.preprocessing.Preprocessor` as arrays, precomputed
once per preprocessor so that a request's transform, clip and plausibility check are a few numpy
operations. Value objects: two plans are equal when their arrays are (a preprocessor's equality)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ScalePlan:
    """The numeric columns' offsets and scaling constants as arrays (equal when their values are)."""

    cols: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mins: np.ndarray
    span: np.ndarray

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.cols, self.low, self.high, self.mins, self.span

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScalePlan):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(self.arrays(), other.arrays(), strict=True))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Bounds:
    """Columns and lower/upper bounds on the scaled axis, as arrays (equal when their values are)."""

    cols: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bounds):
            return NotImplemented
        pairs = ((self.cols, other.cols), (self.low, other.low), (self.high, other.high))
        return all(np.array_equal(a, b) for a, b in pairs)

    __hash__ = None  # type: ignore[assignment]
