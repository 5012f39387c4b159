"""Out-of-distribution detection metrics from per-example OOD scores (higher = more OOD).

The score is typically an epistemic-uncertainty measure such as mutual information or predictive
entropy; these metrics ask how well it separates in-distribution from OOD inputs, independent of any
threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from model_core.metrics._utils import ArrayInput, FloatArray, as_float_1d

__all__ = ["fpr_at_tpr", "ood_report"]


def _stack(score_in: ArrayInput, score_out: ArrayInput) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Concatenate scores with OOD labelled 1, so sklearn's positive class is "OOD"."""
    s_in = as_float_1d(score_in, "score_in")
    s_out = as_float_1d(score_out, "score_out")
    scores = np.concatenate([s_in, s_out])
    is_ood = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)])
    return s_in, s_out, np.stack([scores, is_ood])


def fpr_at_tpr(score_in: ArrayInput, score_out: ArrayInput, tpr: float = 0.95) -> float:
    """Fraction of in-distribution inputs flagged as OOD at the strictest threshold that still flags at
    least ``tpr`` of the OOD inputs (``score >= threshold`` counts as flagged).

    Reads as "how many good inputs we reject to catch 95% of the bad ones". Taken from the exact ROC
    points (no interpolation), i.e. the first ROC point with TPR >= ``tpr``.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    _, _, stacked = _stack(score_in, score_out)
    fpr_curve, tpr_curve, _ = roc_curve(stacked[1], stacked[0], drop_intermediate=False)
    idx = int(np.searchsorted(tpr_curve, tpr, side="left"))
    return float(fpr_curve[min(idx, fpr_curve.size - 1)])


def ood_report(score_in: ArrayInput, score_out: ArrayInput) -> dict[str, float]:
    """Threshold-free OOD detection summary.

    Keys:
        ood_auroc: AUROC with OOD as the positive class, ranked by score (0.5 = chance).
        aupr_ood: average precision with OOD positive, ranked by score.
        aupr_in: average precision with in-distribution positive, ranked by ``-score``; reported too
            because AP depends on which class is called positive and on the class balance.
        score_ratio: ``mean(score_out) / mean(score_in)`` (the "MI ratio" when the score is mutual
            information); only meaningful for non-negative scores, ``nan`` if ``mean(score_in) == 0``.
        fpr_at_95_tpr: see :func:`fpr_at_tpr`.
    """
    s_in, s_out, stacked = _stack(score_in, score_out)
    scores, is_ood = stacked[0], stacked[1].astype(np.int64)
    mean_in = float(np.mean(s_in))
    return {
        "ood_auroc": float(roc_auc_score(is_ood, scores)),
        "aupr_ood": float(average_precision_score(is_ood, scores, pos_label=1)),
        "aupr_in": float(average_precision_score(1 - is_ood, -scores, pos_label=1)),
        "score_ratio": float(np.mean(s_out)) / mean_in if mean_in != 0.0 else float("nan"),
        "fpr_at_95_tpr": fpr_at_tpr(s_in, s_out, tpr=0.95),
    }
