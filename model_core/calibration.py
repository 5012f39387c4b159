"""Serving calibration from validation data: the OOD threshold and the drift reference.

The OOD threshold is the ``quantile`` (default 95th percentile) of the in-distribution validation OOD
scores, so about 5 % of in-distribution predictions are flagged by construction; the drift reference is
``n_quantiles`` evenly spaced quantiles of the same scores, against which the server compares its
sliding window (PSI, KS, Wasserstein).
"""

from __future__ import annotations

import numpy as np

from model_core.checkpoint.manifest import Calibration, DriftReference, OODScore, SamplingMode, Task

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
    interval_level: float = 0.95,
    interval_scales: dict[str, float] | None = None,
) -> tuple[Calibration, DriftReference]:
    scores = np.asarray(val_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size < 2 or not np.isfinite(scores).all():
        raise ValueError("calibration needs at least two finite validation scores")
    kind = ood_score_kind(task)
    threshold = float(np.quantile(scores, quantile))
    levels = np.linspace(0.0, 1.0, n_quantiles)
    ref = np.quantile(scores, levels)
    calib = Calibration(
        ood_score=kind,
        ood_threshold=threshold,
        ood_quantile=quantile,
        default_samples=default_samples,
        sampling_mode=sampling_mode,
        interval_scale=interval_scale,
        interval_level=interval_level,
        interval_scales=interval_scales or {},
    )
    return calib, DriftReference(score=kind, quantiles=[float(v) for v in ref], n_scores=int(scores.size))
