"""One raw input feature's fitted preprocessing (:class:`FeatureSpec`) and how it is fitted.

Per numeric feature: impute with the training median, clip to ``[Q1 - 8*IQR, Q3 + 8*IQR]``, MinMax-scale
with the training minimum and maximum after clipping and imputation, and a plausible range (the observed
range widened by one IQR) that the server flags values outside of. Per categorical feature: the sorted
training categories (one-hot) and the mode. Stored explicitly, so that a manifest is readable and
loadable without scikit-learn.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from model_core.data.coding import FeatureCoding
from model_core.data.values import PreprocessingError, category_column, numeric_column

#: Outlier clipping bound in IQRs beyond the quartiles. Wide on purpose: it targets data-entry and unit
#: errors, not genuine extreme physiology, which is exactly what an uncertainty-aware model must see.
CLIP_IQR_MULTIPLIER = 8.0


class FeatureSpec(BaseModel):
    """Fitted preprocessing for one raw input feature.

    Everything is stored explicitly (rather than, say, a pickled scikit-learn transformer) so that the
    manifest is human-readable, diffable and loadable by a process without scikit-learn.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    unit: str = ""
    kind: Literal["numeric", "categorical"]
    # numeric only
    clip_low: float | None = None
    clip_high: float | None = None
    min: float | None = None
    max: float | None = None
    plausible_low: float | None = None
    plausible_high: float | None = None
    # categorical only
    categories: list[str] | None = None
    # training median (numeric) or training mode (categorical)
    impute: float | str | None = None
    #: clinical codes and canonical UCUM unit (FHIR input); None where the task has none
    coding: FeatureCoding | None = None

    @model_validator(mode="after")
    def _check_complete(self) -> FeatureSpec:
        """Reject half-filled specs at load time, so a corrupt manifest fails loudly, not per request."""
        if self.kind == "numeric":
            needed = {
                "clip_low": self.clip_low,
                "clip_high": self.clip_high,
                "min": self.min,
                "max": self.max,
                "plausible_low": self.plausible_low,
                "plausible_high": self.plausible_high,
                "impute": self.impute,
            }
            absent = [key for key, value in needed.items() if value is None]
            if absent:
                raise ValueError(f"numeric feature {self.name!r} lacks {', '.join(absent)}")
            if not isinstance(self.impute, (int, float)) or isinstance(self.impute, bool):
                raise ValueError(f"numeric feature {self.name!r} needs a numeric impute value")
            values = [float(v) for v in needed.values() if isinstance(v, (int, float))]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"numeric feature {self.name!r} has non-finite constants")
            if self.categories is not None:
                raise ValueError(f"numeric feature {self.name!r} must not list categories")
        else:
            if not self.categories:
                raise ValueError(f"categorical feature {self.name!r} needs at least one category")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"categorical feature {self.name!r} has duplicate categories")
            if not isinstance(self.impute, str) or self.impute not in self.categories:
                raise ValueError(
                    f"categorical feature {self.name!r} needs its mode (a known category) as impute"
                )
        return self

    @property
    def output_names(self) -> list[str]:
        """Names of the model inputs this feature expands to (``name=category`` for one-hot columns)."""
        if self.kind == "numeric":
            return [self.name]
        assert self.categories is not None
        return [f"{self.name}={category}" for category in self.categories]

    @property
    def n_outputs(self) -> int:
        """Width of this feature in the model input."""
        return 1 if self.kind == "numeric" else len(self.categories or ())

    def scale(self, values: np.ndarray, clip: bool = True) -> np.ndarray:
        """Clip and MinMax-scale already-imputed numeric values (float64 in, float64 out).

        A constant training column (max == min) maps to 0 rather than dividing by zero: it carried no
        information during training, so it must not inject any at serving time either. ``clip=False``
        scales without clipping: what the novelty detector sees, so that a unit error is not hidden.
        """
        assert self.clip_low is not None and self.clip_high is not None
        assert self.min is not None and self.max is not None
        clipped = np.clip(values, self.clip_low, self.clip_high) if clip else values
        span = self.max - self.min
        if span <= 0.0:
            return np.zeros_like(clipped)
        return (clipped - self.min) / span

    def is_plausible(self, value: float) -> bool:
        """Whether a raw numeric value lies in the widened training range (servers flag it otherwise)."""
        assert self.plausible_low is not None and self.plausible_high is not None
        return self.plausible_low <= value <= self.plausible_high


def fit_numeric(name: str, unit: str, raw: np.ndarray) -> FeatureSpec:
    """Fit clipping, imputation, scaling and the plausible range of one numeric training column."""
    values = numeric_column(raw, name)
    observed = values[~np.isnan(values)]
    if observed.size == 0:
        raise PreprocessingError(f"feature {name!r} has no observed values in the training split", field=name)
    q1, median, q3 = (float(q) for q in np.percentile(observed, [25.0, 50.0, 75.0]))
    iqr = q3 - q1
    lowest, highest = float(observed.min()), float(observed.max())
    if iqr > 0.0:
        clip_low, clip_high = q1 - CLIP_IQR_MULTIPLIER * iqr, q3 + CLIP_IQR_MULTIPLIER * iqr
    else:
        # A zero IQR (indicators such as diabetes 0/1, or near-constant columns) would make the 8*IQR
        # bounds collapse onto one value and erase every minority value, so clip to the observed range.
        clip_low, clip_high = lowest, highest
    scaled_basis = np.clip(np.where(np.isnan(values), median, values), clip_low, clip_high)
    return FeatureSpec(
        name=name,
        unit=unit,
        kind="numeric",
        clip_low=clip_low,
        clip_high=clip_high,
        impute=median,
        min=float(scaled_basis.min()),
        max=float(scaled_basis.max()),
        plausible_low=lowest - iqr,
        plausible_high=highest + iqr,
    )


def fit_categorical(name: str, unit: str, raw: np.ndarray) -> FeatureSpec:
    """Fit the sorted category list and the mode of one categorical training column."""
    labels = [label for label in category_column(raw, name) if label is not None]
    if not labels:
        raise PreprocessingError(f"feature {name!r} has no observed values in the training split", field=name)
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    categories = sorted(counts)
    # Most frequent; ties go to the alphabetically first category so refits are deterministic.
    mode = min(categories, key=lambda category: (-counts[category], category))
    return FeatureSpec(name=name, unit=unit, kind="categorical", categories=categories, impute=mode)
