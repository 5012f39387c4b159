"""One OOD decision from three detectors, calibrated jointly to a stated false-alarm rate.

The detectors: the epistemic score (mutual information / predictive std), the input novelty score
(:mod:`model_core.novelty`) and an implausible value (outside the widened training range, a rule). An
input is OOD when any fires; its reasons are the ones that fired.

Joint calibration (on the calibration split, never test or OOD data): each continuous detector gets the
same tail level t, i.e. its threshold is its own validation (1 − t) quantile, so both detectors weigh the
same on the p-value scale; t is the largest level at which the *combined* rule (implausible, or either
score above its threshold) flags at most ``alpha`` of the calibration split. This is an exact joint
quantile rather than a Bonferroni split (t = alpha / 2), which would flag less than alpha because the
detectors overlap. The continuous form of the same rule, for threshold-free metrics (AUROC), is the
smallest p-value of the detectors (0 for an implausible input): ``combined_score`` = −log10 of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = ["JointThresholds", "OODReason", "combined_score", "empirical_p", "joint_thresholds", "reasons"]

DEFAULT_ALPHA = 0.05


class OODReason(str, Enum):
    EPISTEMIC = "epistemic"
    NOVELTY = "novelty"
    IMPLAUSIBLE = "implausible"


@dataclass(frozen=True)
class JointThresholds:
    epistemic: float
    novelty: float | None
    #: each detector's tail level t on the calibration split
    level: float
    alpha: float
    #: the combined rule's false-alarm rate on the calibration split (<= alpha, unless the implausible
    #: rows alone exceed alpha: then level 0, the most conservative answer, and this rate > alpha)
    calibration_rate: float


def _threshold(sorted_desc: np.ndarray, k: int) -> float:
    """The threshold that flags (score > it) the k largest of the calibration scores (ties aside)."""
    return float(sorted_desc[k]) if k < sorted_desc.size else float(sorted_desc[-1]) - 1.0


def joint_thresholds(
    epistemic: np.ndarray,
    novelty: np.ndarray | None,
    implausible: np.ndarray | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> JointThresholds:
    """Thresholds at the largest common tail level whose combined rule flags <= ``alpha`` of the rows."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    e = np.asarray(epistemic, dtype=np.float64)
    n = e.size
    if n < 2 or not np.isfinite(e).all():
        raise ValueError("joint calibration needs at least two finite epistemic scores")
    v = None if novelty is None else np.asarray(novelty, dtype=np.float64)
    if v is not None and (v.shape != e.shape or not np.isfinite(v).all()):
        raise ValueError("novelty scores must be finite and match the epistemic scores")
    odd = np.zeros(n, dtype=bool) if implausible is None else np.asarray(implausible, dtype=bool)
    e_desc = np.sort(e)[::-1]
    v_desc = None if v is None else np.sort(v)[::-1]

    def rate(k: int) -> tuple[float, float, float | None]:
        te = e_desc[k] if k < n else -np.inf
        flag = odd | (e > te)
        tv = None
        if v is not None and v_desc is not None:
            tv = v_desc[k] if k < n else -np.inf
            flag = flag | (v > tv)
        return float(flag.mean()), float(te), None if tv is None else float(tv)

    lo, hi = 0, n  # rate(k) is non-decreasing in k: the largest k with rate <= alpha
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rate(mid)[0] <= alpha:
            lo = mid
        else:
            hi = mid - 1
    r, _, _ = rate(lo)
    return JointThresholds(
        epistemic=_threshold(e_desc, lo),
        novelty=None if v_desc is None else _threshold(v_desc, lo),
        level=lo / n,
        alpha=alpha,
        calibration_rate=r,
    )


def empirical_p(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Conformal p-values (1 + #{ref >= s}) / (1 + n) of ``scores`` against calibration ``reference``
    (for a quantile grid: the fraction of grid points at or above, the same thing at the grid's step)."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    above = ref.size - np.searchsorted(ref, s, side="left")
    return (1.0 + above) / (1.0 + ref.size)


def combined_score(
    epistemic: np.ndarray,
    epistemic_reference: np.ndarray,
    novelty: np.ndarray | None = None,
    novelty_reference: np.ndarray | None = None,
    implausible: np.ndarray | None = None,
) -> np.ndarray:
    """−log10 of the smallest detector p-value (higher = more OOD). An implausible input scores one more
    than the largest value a p-value can reach (``log10(1 + n)`` for n reference points), so threshold-free
    metrics rank it above every plausible one while means stay finite."""
    p = empirical_p(epistemic, epistemic_reference)
    top = np.log10(1.0 + np.asarray(epistemic_reference).size)
    if novelty is not None and novelty_reference is not None:
        p = np.minimum(p, empirical_p(novelty, novelty_reference))
        top = max(top, np.log10(1.0 + np.asarray(novelty_reference).size))
    score = -np.log10(p)
    if implausible is not None:
        score = np.where(np.asarray(implausible, dtype=bool), top + 1.0, score)
    return score


def reasons(
    epistemic: np.ndarray,
    epistemic_threshold: float,
    novelty: np.ndarray | None = None,
    novelty_threshold: float | None = None,
    implausible: np.ndarray | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """The decision (n,) bool and, per row, the reasons that fired (in ``OODReason`` order)."""
    e = np.asarray(epistemic, dtype=np.float64) > epistemic_threshold
    n = e.shape[0]
    v = (
        np.asarray(novelty, dtype=np.float64) > novelty_threshold
        if novelty is not None and novelty_threshold is not None
        else np.zeros(n, dtype=bool)
    )
    odd = np.zeros(n, dtype=bool) if implausible is None else np.asarray(implausible, dtype=bool)
    why: list[list[str]] = []
    for i in range(n):
        row = []
        if e[i]:
            row.append(OODReason.EPISTEMIC.value)
        if v[i]:
            row.append(OODReason.NOVELTY.value)
        if odd[i]:
            row.append(OODReason.IMPLAUSIBLE.value)
        why.append(row)
    return e | v | odd, why
