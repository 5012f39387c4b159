"""Classification metrics for predictive distributions (calibration, ranking and misclassification detection).

Every function takes ``probs`` as either an (N,) array of positive-class probabilities (binary task) or
an (N, C) array of class probabilities, and integer ``labels`` of shape (N,). Binary (N,) inputs are
expanded to two columns ``[1 - p, p]`` wherever a per-class view is needed, so a binary model gives the
same numbers whether it reports ``p`` or ``softmax`` outputs of shape (N, 2).

Metrics that are undefined when only one class is present (AUROC, the AUPR family) return
``float('nan')`` instead of raising, because evaluation loops over small or filtered splits should
report "undefined" rather than crash half-way through a sweep.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from model_core.metrics._utils import (
    ArrayInput,
    BoolArray,
    FloatArray,
    IntArray,
    as_float_1d,
    as_labels,
    to_numpy,
)

__all__ = [
    "ReliabilityCurve",
    "accuracy",
    "aupr_err",
    "aupr_succ",
    "auprc",
    "auroc",
    "brier",
    "classification_report",
    "ece",
    "nll",
    "reliability_curve",
]

_PROB_TOL = 1e-6  # float32 softmax can overshoot [0, 1] by a few ulps
_ROW_SUM_TOL = 1e-2  # bfloat16 softmax rows can be off by a few 1e-3; unnormalised scores are off by far more


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of a reliability diagram; empty bins have ``nan`` confidence/accuracy."""

    confidence: FloatArray  # mean confidence of the examples in each bin
    accuracy: FloatArray  # fraction of correct predictions in each bin
    counts: IntArray  # number of examples in each bin (not ``count``: that would shadow tuple.count)


def _class_probs(probs: ArrayInput) -> FloatArray:
    """Return an (N, C) float64 probability matrix, expanding binary (N,) input to ``[1 - p, p]``."""
    p = to_numpy(probs).astype(np.float64, copy=False)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    elif p.ndim != 2:
        raise ValueError(f"probs must be (N,) or (N, C), got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("probs must not be empty")
    if p.shape[1] < 2:
        raise ValueError(f"probs needs at least 2 classes (or a 1-D binary vector), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < -_PROB_TOL or p.max() > 1.0 + _PROB_TOL:
        raise ValueError("probs must be finite probabilities in [0, 1] (did you pass logits?)")
    if not np.allclose(p.sum(axis=1), 1.0, atol=_ROW_SUM_TOL, rtol=0.0):
        raise ValueError("rows of probs must sum to 1 (did you pass logits or unnormalised scores?)")
    return np.clip(p, 0.0, 1.0)


def _prepare(probs: ArrayInput, labels: ArrayInput) -> tuple[FloatArray, IntArray]:
    p = _class_probs(probs)
    y = as_labels(labels, n=p.shape[0], n_classes=p.shape[1])
    return p, y


def _correct(p: FloatArray, y: IntArray) -> BoolArray:
    """Top-1 correctness; ``argmax`` breaks ties towards the lower class index (so p=0.5 predicts 0)."""
    return np.asarray(p.argmax(axis=1) == y)


def _safe_average_precision(positive: BoolArray, score: FloatArray) -> float:
    """AP of ``positive`` ranked by ``score``; ``nan`` if either class is absent (AP undefined or trivial)."""
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.size:
        return float("nan")
    return float(average_precision_score(positive.astype(np.int64), score, pos_label=1))


def nll(probs: ArrayInput, labels: ArrayInput, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class, ``-mean(log(max(p[y], eps)))``.

    ``eps`` keeps a single confidently-wrong prediction from turning the average into ``inf``.
    """
    p, y = _prepare(probs, labels)
    p_true = p[np.arange(p.shape[0]), y]
    return float(-np.mean(np.log(np.maximum(p_true, eps))))


def reliability_curve(probs: ArrayInput, labels: ArrayInput, n_bins: int = 15) -> ReliabilityCurve:
    """Per-bin mean confidence, accuracy and count for a reliability diagram.

    Confidence is the top-class probability ``max_c p_c`` (binary ``p`` is first expanded to
    ``[1 - p, p]``, so the confidence is ``max(p, 1 - p)``). Bins are ``n_bins`` equal-width intervals
    ``(lo, hi]`` over [0, 1]; the first bin also includes 0. This is the convention of the Guo et al.
    (2017) reference code. It differs from torchmetrics, which uses ``[lo, hi)`` bins
    (``torch.bucketize(right=True)``) and, for binary inputs, bins the positive-class probability
    against the label rather than the top-class confidence; scikit-learn's ``calibration_curve`` also
    bins the positive-class probability and drops empty bins. Values lying exactly on a bin edge can
    therefore land in a different bin than in those libraries.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y = _prepare(probs, labels)
    conf = p.max(axis=1)
    correct = _correct(p, y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") returns i with edges[i-1] < conf <= edges[i], i.e. bin i-1 = (lo, hi];
    # conf == 0 gives i == 0, which the clip sends to the first bin.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_correct = np.bincount(idx, weights=correct, minlength=n_bins)
    nonempty = count > 0
    mean_conf = np.full(n_bins, np.nan)
    mean_acc = np.full(n_bins, np.nan)
    mean_conf[nonempty] = sum_conf[nonempty] / count[nonempty]
    mean_acc[nonempty] = sum_correct[nonempty] / count[nonempty]
    return ReliabilityCurve(confidence=mean_conf, accuracy=mean_acc, counts=count)


def ece(probs: ArrayInput, labels: ArrayInput, n_bins: int = 15) -> float:
    """Expected calibration error: ``sum_b (n_b / N) * |acc_b - conf_b|`` over equal-width bins.

    Top-label ECE, with confidence = max class probability and bins ``(lo, hi]`` (first bin includes 0);
    see :func:`reliability_curve` for the binning and how it differs from torchmetrics/scikit-learn.
    """
    curve = reliability_curve(probs, labels, n_bins=n_bins)
    nonempty = curve.counts > 0
    weights = curve.counts[nonempty] / curve.counts.sum()
    gaps = np.abs(curve.accuracy[nonempty] - curve.confidence[nonempty])
    return float(np.sum(weights * gaps))


def brier(probs: ArrayInput, labels: ArrayInput) -> float:
    """Brier score.

    Binary tasks, given as (N,) or (N, 2): ``mean((p - y)^2)`` with ``p`` the positive-class probability
    (scikit-learn's ``brier_score_loss``), so the value does not double when the same model reports
    two columns. Multiclass (C > 2): ``mean_i sum_c (p_ic - 1{y_i = c})^2`` (Brier's original form).
    Defined even when only one class is present.
    """
    p, y = _prepare(probs, labels)
    if p.shape[1] == 2:
        return float(brier_score_loss(y, p[:, 1], pos_label=1))
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def accuracy(probs: ArrayInput, labels: ArrayInput) -> float:
    """Top-1 accuracy; ties go to the lowest class index, so a binary ``p = 0.5`` predicts class 0."""
    p, y = _prepare(probs, labels)
    return float(np.mean(_correct(p, y)))


def auroc(probs: ArrayInput, labels: ArrayInput) -> float:
    """Area under the ROC curve of the positive class (class 1), via scikit-learn.

    For C > 2 this is the unweighted mean of one-vs-rest AUROCs over the classes that have both
    positives and negatives (scikit-learn's ``multi_class="ovr"`` raises instead when a class is
    missing). ``nan`` when no class is usable, e.g. a single class present.
    """
    p, y = _prepare(probs, labels)
    if p.shape[1] == 2:
        if np.unique(y).size < 2:
            return float("nan")
        return float(roc_auc_score(y, p[:, 1]))
    scores = [float(roc_auc_score(y == c, p[:, c])) for c in range(p.shape[1]) if 0 < np.sum(y == c) < y.size]
    return float(np.mean(scores)) if scores else float("nan")


def auprc(probs: ArrayInput, labels: ArrayInput) -> float:
    """Average precision of the positive class (class 1), scikit-learn's ``average_precision_score``.

    For C > 2, the unweighted mean of one-vs-rest APs over classes with both positives and negatives.
    ``nan`` if only one class is present (AP would be undefined or trivially 1).
    """
    p, y = _prepare(probs, labels)
    if p.shape[1] == 2:
        return _safe_average_precision(y == 1, p[:, 1])
    scores = [_safe_average_precision(y == c, p[:, c]) for c in range(p.shape[1])]
    valid = [s for s in scores if not np.isnan(s)]
    return float(np.mean(valid)) if valid else float("nan")


def _uncertainty_for(uncertainty: ArrayInput, n: int) -> FloatArray:
    u = as_float_1d(uncertainty, "uncertainty")
    if u.shape[0] != n:
        raise ValueError(f"uncertainty has {u.shape[0]} entries but probs has {n}")
    return u


def aupr_err(probs: ArrayInput, labels: ArrayInput, uncertainty: ArrayInput) -> float:
    """AUPR for detecting misclassifications: errors are the positive class, ranked by ``uncertainty``.

    Rewards uncertainty that is high exactly where the model is wrong. ``nan`` if the model is always
    right or always wrong.
    """
    p, y = _prepare(probs, labels)
    u = _uncertainty_for(uncertainty, p.shape[0])
    return _safe_average_precision(~_correct(p, y), u)


def aupr_succ(probs: ArrayInput, labels: ArrayInput, uncertainty: ArrayInput) -> float:
    """AUPR for detecting correct predictions: successes are positive, ranked by ``-uncertainty``.

    ``nan`` if the model is always right or always wrong.
    """
    p, y = _prepare(probs, labels)
    u = _uncertainty_for(uncertainty, p.shape[0])
    return _safe_average_precision(_correct(p, y), -u)


def classification_report(
    probs: ArrayInput, labels: ArrayInput, uncertainty: ArrayInput, n_bins: int = 15
) -> dict[str, float]:
    """All classification metrics in one dict (keys: nll, ece, brier, accuracy, auroc, auprc, aupr_err,
    aupr_succ), so experiment logs always carry the same set of numbers."""
    return {
        "nll": nll(probs, labels),
        "ece": ece(probs, labels, n_bins=n_bins),
        "brier": brier(probs, labels),
        "accuracy": accuracy(probs, labels),
        "auroc": auroc(probs, labels),
        "auprc": auprc(probs, labels),
        "aupr_err": aupr_err(probs, labels, uncertainty),
        "aupr_succ": aupr_succ(probs, labels, uncertainty),
    }
