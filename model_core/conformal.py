"""Split-conformal intervals and prediction sets: finite-sample marginal coverage under exchangeability.

Given n calibration examples that the model never trained on and a nonconformity score s(x, y), the
``ceil((n + 1) · level)``-th smallest calibration score q̂ makes ``{y : s(x, y) <= q̂}`` cover a new,
exchangeable example's label with probability >= ``level`` (Vovk et al. 2005; Angelopoulos & Bates 2021).
Scores used here:

* regression: the normalised residual ``|y − mean| / sqrt(variance)``, so the interval is
  ``mean ± q̂ · sqrt(variance)``: as wide as the model's own uncertainty says, scaled to cover;
* classification: ``1 − p̂(y)`` (LAC, Sadinle et al. 2019), so the set is ``{k : p̂(k) >= 1 − q̂}``;
  in a binary task a set with both labels means "the model cannot decide at this level" (refer), an
  empty one "neither label is plausible at this level" (only when q̂ < 0.5).

Why not a library object: the service needs one number per model (q̂, stored in the manifest), applied
with numpy to a batch; crepes' ``ConformalRegressor``/``ConformalClassifier`` and MAPIE compute the same
order statistic from the same scores, and the tests check q̂ against crepes. Under shift (the OOD sets)
coverage is not guaranteed; ``docs/model.md`` says so and the monitoring measures it live.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from model_core.checkpoint.manifest import Calibration

__all__ = [
    "REPORT_INTERVAL_LEVEL",
    "SERVED_INTERVAL_LEVEL",
    "conformal_quantile",
    "gaussian_half_width",
    "interval_scores",
    "label_scores",
    "prediction_sets",
    "served_interval",
]

#: The level of the regression interval every prediction carries (the contract: central 90 %). The one
#: definition: the service, the evaluation and the calibration read it here.
SERVED_INTERVAL_LEVEL = 0.9
#: The level of the reported PICP/MPIW metrics of the Gaussian interval (the paper's 95 %).
REPORT_INTERVAL_LEVEL = 0.95


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """q̂: the ``ceil((n + 1) · level)``-th smallest score; ``inf`` when n is too small for ``level``."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("conformal calibration needs finite scores")
    k = math.ceil((s.size + 1) * level)
    return float("inf") if k > s.size else float(s[k - 1])


def interval_scores(y: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Normalised residuals |y − mean| / sd (sd floored at 1e-12 so a zero-variance model still works)."""
    sd = np.sqrt(np.maximum(np.asarray(variance, dtype=np.float64), 1e-24))
    return np.abs(np.asarray(y, dtype=np.float64) - np.asarray(mean, dtype=np.float64)) / sd


def gaussian_half_width(sd: np.ndarray, level: float, scale: float = 1.0) -> np.ndarray:
    """``scale · z · sd``, the half width of the central ``level`` interval of N(mean, sd²) widened by a
    validation-fitted factor (``calibration.interval_scales``; no finite-sample guarantee)."""
    return scale * NormalDist().inv_cdf(0.5 + level / 2.0) * np.asarray(sd, dtype=np.float64)


def served_interval(
    calibration: Calibration, mean: np.ndarray, variance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The regression interval a prediction carries, (low, high) in float32: mean ± q̂ · sd with the
    manifest's split-conformal q̂; a checkpoint calibrated before conformal calibration existed gets the
    Gaussian interval at :data:`SERVED_INTERVAL_LEVEL` widened by its validation-fitted factor."""
    sd = np.sqrt(np.asarray(variance, dtype=np.float64))
    if calibration.conformal is not None:
        half = calibration.conformal.quantile * sd
    else:
        scale = calibration.interval_scales.get(str(SERVED_INTERVAL_LEVEL), 1.0)
        half = gaussian_half_width(sd, SERVED_INTERVAL_LEVEL, scale)
    m = np.asarray(mean, dtype=np.float64)
    return (m - half).astype(np.float32), (m + half).astype(np.float32)


def label_probabilities(mean: np.ndarray) -> np.ndarray:
    """(n, C) class probabilities from a binary task's P(positive) (n,) or a multiclass (n, C) mean."""
    p = np.asarray(mean, dtype=np.float64)
    return np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p


def label_scores(y: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """LAC scores 1 − p̂(y) of the true labels ``y`` (class indices)."""
    probs = label_probabilities(mean)
    return 1.0 - probs[np.arange(len(probs)), np.asarray(y, dtype=np.int64)]


def prediction_sets(mean: np.ndarray, q: float) -> np.ndarray:
    """(n, C) boolean membership of each label in the conformal set ``{k : 1 − p̂(k) <= q̂}``."""
    return 1.0 - label_probabilities(mean) <= q
