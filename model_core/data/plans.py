"""The fitted constants of a :class:`~model_core.data.preprocessing.Preprocessor` as arrays, precomputed
once per preprocessor so that a request's transform, clip and plausibility check are a few numpy
operations. Value objects: two plans are equal when their arrays are (a preprocessor's equality)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from model_core.data.features import FeatureSpec


class _ArrayValue:
    """Equality of a dataclass of arrays: same type, every init field ``np.array_equal``."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        fields = (f.name for f in dataclasses.fields(self) if f.init)  # type: ignore[arg-type]
        return all(np.array_equal(getattr(self, name), getattr(other, name)) for name in fields)

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True, eq=False)
class ScalePlan(_ArrayValue):
    """The numeric columns' offsets and scaling constants as arrays (equal when their values are)."""

    cols: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mins: np.ndarray
    span: np.ndarray
    _varies: np.ndarray = dataclasses.field(init=False, repr=False)  # span > 0
    _safe: np.ndarray = dataclasses.field(init=False, repr=False)  # the span, 1 where it is 0

    def scale(self, block: np.ndarray, clip: bool) -> np.ndarray:
        """Raw numeric values (columns in ``cols`` order) -> scaled, with the same elementwise operations
        as ``FeatureSpec.scale``: clip (optionally), subtract the minimum, divide by the span (0 for a
        column that was constant in training). Every transform of a preprocessor scales through here."""
        if clip:
            block = np.clip(block, self.low, self.high)
        with np.errstate(over="ignore"):  # unclipped: a value near the float limit scales to ±inf,
            # which clip() bounds, the novelty score caps (INPUT_CAP) and the plausible rule flags
            return np.where(self._varies, (block - self.mins) / self._safe, 0.0)

    def __post_init__(self) -> None:  # derived once, not per request
        object.__setattr__(self, "_varies", self.span > 0.0)
        object.__setattr__(self, "_safe", np.where(self.span > 0.0, self.span, 1.0))


@dataclasses.dataclass(frozen=True, eq=False)
class Bounds(_ArrayValue):
    """Columns and lower/upper bounds on the scaled axis, as arrays (equal when their values are)."""

    cols: np.ndarray
    low: np.ndarray
    high: np.ndarray
    #: the bounds as float32, for clipping a float32 model input without a cast per request
    low32: np.ndarray = dataclasses.field(init=False, repr=False)
    high32: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "low32", self.low.astype(np.float32))
        object.__setattr__(self, "high32", self.high.astype(np.float32))


@dataclasses.dataclass(frozen=True, eq=False)
class MatrixPlan(_ArrayValue):
    """Where each feature of a raw-value matrix goes (``Preprocessor.transform_matrix``): positions of
    the numeric and the categorical features in feature order, the categorical ones' column offsets in
    the model input (the numeric ones' are ``ScalePlan.cols``),
    imputation values, plausible ranges (raw units), category counts and the modes' indices."""

    names: list[str]
    num_names: list[str]
    num: np.ndarray
    impute: np.ndarray
    plausible_low: np.ndarray
    plausible_high: np.ndarray
    cat: np.ndarray
    cat_offsets: np.ndarray
    n_categories: np.ndarray
    modes: np.ndarray

    @classmethod
    def of(cls, plan: Sequence[tuple[FeatureSpec, int]]) -> MatrixPlan:
        num = [(j, spec, o) for j, (spec, o) in enumerate(plan) if spec.kind == "numeric"]
        cat = [(j, spec, o) for j, (spec, o) in enumerate(plan) if spec.kind != "numeric"]
        index, floats = np.intp, np.float64
        return cls(
            [spec.name for spec, _ in plan],
            [s.name for _, s, _ in num],
            np.array([j for j, _, _ in num], dtype=index),
            np.array([s.impute for _, s, _ in num], dtype=floats),
            np.array([s.plausible_low for _, s, _ in num], dtype=floats),
            np.array([s.plausible_high for _, s, _ in num], dtype=floats),
            np.array([j for j, _, _ in cat], dtype=index),
            np.array([o for _, _, o in cat], dtype=index),
            np.array([len(s.categories or []) for _, s, _ in cat], dtype=floats),
            np.array([(s.categories or []).index(str(s.impute)) for _, s, _ in cat], dtype=index),
        )


def numeric_plans(
    numeric: Sequence[tuple[FeatureSpec, int]],
) -> tuple[ScalePlan | None, Bounds | None, Bounds | None]:
    """The numeric features' (spec, column offset) pairs -> the scaling, the clipping bounds on the
    scaled axis and the plausible bounds on the scaled axis (None: no numeric feature, or none that was
    not constant in training, for the plausible bounds)."""
    if not numeric:
        return None, None, None
    cols = np.array([o for _, o in numeric], dtype=np.intp)
    low = np.array([s.clip_low for s, _ in numeric], dtype=np.float64)
    high = np.array([s.clip_high for s, _ in numeric], dtype=np.float64)
    mins = np.array([s.min for s, _ in numeric], dtype=np.float64)
    span = np.array([s.max - s.min for s, _ in numeric], dtype=np.float64)  # type: ignore[operator]
    safe = np.where(span > 0.0, span, 1.0)
    clip = Bounds(
        cols, np.where(span > 0.0, (low - mins) / safe, 0.0), np.where(span > 0.0, (high - mins) / safe, 0.0)
    )
    ranged = [(s, o) for s, o in numeric if s.max > s.min]  # type: ignore[operator]
    plausible = (
        Bounds(
            np.array([o for _, o in ranged], dtype=np.intp),
            np.array([(s.plausible_low - s.min) / (s.max - s.min) for s, _ in ranged]),  # type: ignore[operator]
            np.array([(s.plausible_high - s.min) / (s.max - s.min) for s, _ in ranged]),  # type: ignore[operator]
        )
        if ranged
        else None
    )
    return ScalePlan(cols, low, high, mins, span), clip, plausible
