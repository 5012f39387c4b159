"""Selective prediction: how the error changes when the most uncertain examples are abstained on.

A useful uncertainty makes the risk fall as coverage shrinks; a useless one leaves it flat. Examples
are ranked by ascending uncertainty with a stable sort, so ties keep their original order (lower index
kept first) and results are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from model_core.metrics._utils import ArrayInput, FloatArray, as_float_1d, check_same_length

__all__ = ["area_under_risk_coverage", "selective_curve", "selective_risk"]

DEFAULT_RETENTIONS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _sorted_errors(errors_or_losses: ArrayInput, uncertainty: ArrayInput) -> FloatArray:
    """Errors reordered from most to least certain (stable: ties broken by original index)."""
    e = as_float_1d(errors_or_losses, "errors_or_losses")
    u = as_float_1d(uncertainty, "uncertainty")
    check_same_length(errors_or_losses=e, uncertainty=u)
    return e[np.argsort(u, kind="stable")]


def _n_kept(retention: float, n: int) -> int:
    """``ceil(retention * n)``, at least 1, so the kept fraction is never below ``retention``; the
    rounding to 9 decimals stops float noise (0.7 * 10 = 7.000000000000001) from keeping one extra."""
    if not 0.0 < retention <= 1.0:
        raise ValueError(f"retention must lie in (0, 1], got {retention}")
    return max(1, math.ceil(round(retention * n, 9)))


def selective_risk(
    errors_or_losses: ArrayInput,
    uncertainty: ArrayInput,
    retentions: Sequence[float] = DEFAULT_RETENTIONS,
) -> dict[float, float]:
    """Mean error over the ``ceil(r * N)`` least-uncertain examples, for each retention ``r``.

    ``errors_or_losses`` can be 0/1 misclassification indicators (risk = error rate) or any per-example
    loss (e.g. squared error). At ``r = 1`` this is the plain mean.
    """
    e = _sorted_errors(errors_or_losses, uncertainty)
    cum = np.cumsum(e)
    out: dict[float, float] = {}
    for r in retentions:
        k = _n_kept(float(r), e.size)
        out[float(r)] = float(cum[k - 1] / k)
    return out


def selective_curve(errors_or_losses: ArrayInput, uncertainty: ArrayInput) -> tuple[FloatArray, FloatArray]:
    """Risk-coverage curve at every cut point: ``retention[k-1] = k / N`` and ``risk[k-1]`` = mean error
    of the ``k`` least-uncertain examples, for k = 1..N (retention ascending), for plotting."""
    e = _sorted_errors(errors_or_losses, uncertainty)
    k = np.arange(1, e.size + 1, dtype=np.float64)
    return k / e.size, np.cumsum(e) / k


def area_under_risk_coverage(errors_or_losses: ArrayInput, uncertainty: ArrayInput) -> float:
    """AURC: mean of the risk over the N cut points of :func:`selective_curve` (Geifman et al., 2019).

    This is the discrete definition, a right-endpoint Riemann sum over coverage steps of 1/N; it is not a
    trapezoid, which would give a slightly different value for small N. Lower is better.
    """
    _, risk = selective_curve(errors_or_losses, uncertainty)
    return float(np.mean(risk))
