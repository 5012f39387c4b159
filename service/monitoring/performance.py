"""Realized performance (joined outcomes) and label-free estimated performance (CBPE) of a window.

Realized metrics are the evaluation's own (``model_core.metrics``, scikit-learn underneath), computed on
the latest outcomes and the predictions they belong to, so a gauge equals what ``lrbnn evaluate`` would
report on the same pairs.

Estimated metrics follow NannyML's confidence-based performance estimation (CBPE): if the predicted
probabilities are calibrated, the label of an instance with probability p is 1 with probability p, so
the expected accuracy of a window is mean(max(p, 1 - p)), its expected Brier score mean(p (1 - p)) and
its expected ROC curve the one of a sample where each instance is a positive with weight p and a
negative with weight 1 - p (``roc_auc_score`` with ``sample_weight``). The one assumption is
calibration under the current inputs: the estimate tracks a change of case mix (covariate shift) but
not a change of the input-outcome relation (concept shift), which only the realized metrics see. A gap
between the two is the signal to look at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
from sklearn.metrics import mean_absolute_error, roc_auc_score

from model_core.checkpoint.manifest import Task
from model_core.metrics.classification import accuracy, auroc, brier, ece
from service.store.records import JoinedOutcome


class Realized(str, Enum):
    """Values of the ``metric`` label of ``lrbnn_realized_performance``."""

    BRIER = "brier"
    ECE = "ece"
    AUROC = "auroc"
    ACCURACY = "accuracy"
    SET_COVERAGE = "set_coverage"
    MAE = "mae"
    INTERVAL_COVERAGE = "interval_coverage"


class Estimated(str, Enum):
    """Values of the ``metric`` label of ``lrbnn_estimated_performance``."""

    AUROC = "auroc"
    ACCURACY = "accuracy"
    BRIER = "brier"


CLASSIFICATION_REALIZED = (
    Realized.BRIER,
    Realized.ECE,
    Realized.AUROC,
    Realized.ACCURACY,
    Realized.SET_COVERAGE,
)
REGRESSION_REALIZED = (Realized.MAE, Realized.INTERVAL_COVERAGE)


def realized_metrics(task: Task) -> tuple[Realized, ...]:
    return REGRESSION_REALIZED if task is Task.REGRESSION else CLASSIFICATION_REALIZED


def estimated_metrics(task: Task) -> tuple[Estimated, ...]:
    return () if task is Task.REGRESSION else tuple(Estimated)


def _probs(means: Sequence[Any]) -> np.ndarray:
    """(n, C) class probabilities from stored means (a binary model stores P(positive))."""
    p = np.asarray(means, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    return p


def realized(
    task: Task, pairs: Sequence[JoinedOutcome], labels: Sequence[str] | None
) -> dict[Realized, float]:
    """Every realized metric of ``task`` over ``pairs``; NaN where undefined (e.g. AUROC of one class,
    set coverage of a checkpoint without conformal sets)."""
    nan = math.nan
    if not pairs:
        return {m: nan for m in realized_metrics(task)}
    y = np.asarray([p.value for p in pairs], dtype=np.float64)
    if task is Task.REGRESSION:
        mean = np.asarray([p.outputs["mean"] for p in pairs], dtype=np.float64).reshape(len(pairs), -1)[:, 0]
        out = {Realized.MAE: float(mean_absolute_error(y, mean))}
        bounds = (
            [p.outputs.get("interval_low") for p in pairs],
            [p.outputs.get("interval_high") for p in pairs],
        )
        if all(b is not None for b in bounds[0]) and all(b is not None for b in bounds[1]):
            lo, hi = (np.asarray(b, dtype=np.float64) for b in bounds)
            out[Realized.INTERVAL_COVERAGE] = float(np.mean((lo <= y) & (y <= hi)))
        else:
            out[Realized.INTERVAL_COVERAGE] = nan
        return out
    probs = _probs([p.outputs["mean"] for p in pairs])
    k = y.astype(np.int64)
    out = {
        Realized.BRIER: brier(probs, k),
        Realized.ECE: ece(probs, k),
        Realized.AUROC: auroc(probs, k),
        Realized.ACCURACY: accuracy(probs, k),
    }
    sets = [p.outputs.get("prediction_set") for p in pairs]
    if labels and all(s is not None for s in sets):
        covered = [labels[c] in (s or ()) for c, s in zip(k, sets, strict=True)]
        out[Realized.SET_COVERAGE] = float(np.mean(covered))
    else:
        out[Realized.SET_COVERAGE] = nan
    return out


def estimated(task: Task, means: Sequence[Any]) -> dict[Estimated, float]:
    """CBPE estimates of accuracy, Brier score and AUROC (binary) from predicted probabilities alone."""
    if task is Task.REGRESSION:
        return {}
    if not means:
        return {m: math.nan for m in Estimated}
    p = _probs(means)
    top = p.max(axis=1)
    out = {
        Estimated.ACCURACY: float(np.mean(top)),
        Estimated.BRIER: float(np.mean(1.0 - np.sum(p * p, axis=1))),
        Estimated.AUROC: math.nan,
    }
    if p.shape[1] == 2:
        # a binary Brier score is on P(positive) alone, as sklearn's: E[(p - y)^2] = p (1 - p)
        pos = p[:, 1]
        out[Estimated.BRIER] = float(np.mean(pos * (1.0 - pos)))
        n = pos.size
        y = np.r_[np.ones(n), np.zeros(n)]
        w = np.r_[pos, 1.0 - pos]
        if w[:n].sum() > 0 and w[n:].sum() > 0:
            out[Estimated.AUROC] = float(roc_auc_score(y, np.r_[pos, pos], sample_weight=w))
    return out


class PerformancePublisher:
    """Sets the realized and estimated gauges from the store's latest windows, at most every
    ``min_interval_s`` per model (``/metrics`` calls it before rendering, in a worker thread: two indexed
    queries of at most ``window`` rows each). Every worker reads the same shared store, so any worker's
    answer describes the whole service."""

    def __init__(self, store: Any, metrics: Any, window: int, min_interval_s: float = 1.0) -> None:
        self.store = store
        self.metrics = metrics
        self.window = window
        self.min_interval_s = min_interval_s
        self._last: dict[str, float] = {}

    def publish(self, models: Sequence[tuple[str, Task, Sequence[str] | None]], now: float) -> None:
        if not self.store.ready:
            return
        m = self.metrics
        for name, task, labels in models:
            if now - self._last.get(name, -math.inf) < self.min_interval_s:
                continue
            self._last[name] = now
            pairs = self.store.recent_outcomes(name, self.window)
            for metric, value in realized(task, pairs, labels).items():
                m.child(m.realized, name, metric.value).set(value)
            if task is not Task.REGRESSION:
                means = [o["mean"] for o in self.store.recent_outputs(name, self.window)]
                for est, value in estimated(task, means).items():
                    m.child(m.estimated, name, est.value).set(value)
