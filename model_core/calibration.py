"""Serving calibration from the calibration split: OOD thresholds, conformal q̂, drift references.

Without a novelty detector the OOD threshold is the ``quantile`` (default 95th percentile) of the
calibration split's OOD scores, so about 5 % of in-distribution predictions are flagged by construction.
With one (:func:`calibrate` given ``novelty``), the epistemic and novelty thresholds are calibrated
jointly (:func:`model_core.ood.joint_thresholds`) so that the combined decision, implausible values
included, flags ``1 − quantile`` of the split. The drift reference is ``n_quantiles`` evenly spaced
quantiles of the epistemic scores (and the novelty calibration keeps the same of its scores), against
which the server compares its sliding window (PSI, KS, Wasserstein). ``conformal`` adds the split-
conformal q̂ of the interval or prediction set (:mod:`model_core.conformal`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_core.checkpoint.manifest import (
    Calibration,
    ConformalCalibration,
    DriftReference,
    NoveltyCalibration,
    OODScore,
    SamplingMode,
    Task,
)
from model_core.conformal import REPORT_INTERVAL_LEVEL, conformal_quantile, interval_scores, label_scores
from model_core.ood import joint_thresholds

#: The contract's conformal level: central 90 % intervals and 90 % prediction sets.
CONFORMAL_LEVEL = 0.9


@dataclass(frozen=True)
class NoveltyScores:
    """The calibration split's novelty scores, with what the manifest records of the detector."""

    scores: np.ndarray
    features: str
    dim: int
    sha256: str
    meta: dict[str, object]


@dataclass(frozen=True)
class ConformalInputs:
    """The calibration split's predictions and labels, for q̂."""

    y: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    level: float = CONFORMAL_LEVEL


DEFAULT_QUANTILE = 0.95
DRIFT_QUANTILES = 1000


def ood_score_kind(task: Task) -> OODScore:
    return OODScore.PREDICTIVE_STD if task is Task.REGRESSION else OODScore.MUTUAL_INFORMATION


def calibrate(
    val_scores: np.ndarray,
    task: Task,
    default_samples: int,
    quantile: float = DEFAULT_QUANTILE,
    n_quantiles: int = DRIFT_QUANTILES,
    sampling_mode: SamplingMode = SamplingMode.FRESH,
    interval_scale: float = 1.0,
    interval_level: float = REPORT_INTERVAL_LEVEL,
    interval_scales: dict[str, float] | None = None,
    novelty: NoveltyScores | None = None,
    implausible: np.ndarray | None = None,
    conformal: ConformalInputs | None = None,
) -> tuple[Calibration, DriftReference]:
    scores = np.asarray(val_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size < 2 or not np.isfinite(scores).all():
        raise ValueError("calibration needs at least two finite validation scores")
    kind = ood_score_kind(task)
    threshold = float(np.quantile(scores, quantile))
    levels = np.linspace(0.0, 1.0, n_quantiles)
    ref = np.quantile(scores, levels)
    novelty_cal = None
    if novelty is not None:
        joint = joint_thresholds(scores, novelty.scores, implausible, alpha=1.0 - quantile)
        threshold = joint.epistemic
        assert joint.novelty is not None
        novelty_cal = NoveltyCalibration(
            features=novelty.features,  # type: ignore[arg-type]
            dim=novelty.dim,
            threshold=joint.novelty,
            quantiles=[float(v) for v in np.quantile(novelty.scores, levels)],
            n_scores=int(novelty.scores.size),
            sha256=novelty.sha256,
            meta=dict(novelty.meta),
        )
    conformal_cal = None
    if conformal is not None:
        regression = task is Task.REGRESSION
        cs = (
            interval_scores(conformal.y, conformal.mean, conformal.variance)
            if regression
            else label_scores(conformal.y, conformal.mean)
        )
        conformal_cal = ConformalCalibration(
            level=conformal.level,
            score="normalized_residual" if regression else "lac",
            quantile=conformal_quantile(cs, conformal.level),
            n=int(cs.size),
        )
    calib = Calibration(
        ood_score=kind,
        ood_threshold=threshold,
        ood_quantile=quantile,
        ood_alpha=1.0 - quantile,
        novelty=novelty_cal,
        conformal=conformal_cal,
        default_samples=default_samples,
        sampling_mode=sampling_mode,
        interval_scale=interval_scale,
        interval_level=interval_level,
        interval_scales=interval_scales or {},
    )
    return calib, DriftReference(score=kind, quantiles=[float(v) for v in ref], n_scores=int(scores.size))
