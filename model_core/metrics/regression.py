"""Regression metrics for Gaussian predictive distributions N(mean, variance).

Point-error metrics (MAE, RMSE) only look at the mean; the others score the whole predictive
distribution, so a model cannot look good by being accurate but over- or under-confident.

The normal CDF and quantile come from ``scipy.special`` (``ndtr``/``ndtri``); scipy is always present
because scikit-learn depends on it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

from model_core.metrics._utils import ArrayInput, FloatArray, as_float_1d, check_same_length, to_numpy

__all__ = [
    "crps_gaussian",
    "gaussian_nll",
    "interval_scale",
    "mae",
    "mpiw",
    "picp",
    "regression_calibration_error",
    "regression_report",
    "rmse",
]

DEFAULT_CALIBRATION_LEVELS: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.05, 0.95, 19))


def _mean_target(mean: ArrayInput, target: ArrayInput) -> tuple[FloatArray, FloatArray]:
    mu = as_float_1d(mean, "mean")
    y = as_float_1d(target, "target")
    check_same_length(mean=mu, target=y)
    return mu, y


def _std(variance: ArrayInput) -> FloatArray:
    """Predictive standard deviation; a non-positive variance is rejected because NLL, CRPS and the
    interval metrics are undefined (or silently degenerate) for a point mass."""
    var = as_float_1d(variance, "variance")
    if np.any(var <= 0.0):
        raise ValueError("variance must be strictly positive")
    return np.sqrt(var)


def _prepare(
    mean: ArrayInput, variance: ArrayInput, target: ArrayInput
) -> tuple[FloatArray, FloatArray, FloatArray]:
    mu, y = _mean_target(mean, target)
    sigma = _std(variance)
    check_same_length(mean=mu, variance=sigma, target=y)
    return mu, sigma, y


def _z_for_level(level: float | FloatArray) -> FloatArray:
    """Half-width, in standard deviations, of the central interval holding ``level`` of the mass."""
    lv = np.asarray(level, dtype=np.float64)
    if np.any(~np.isfinite(lv)) or np.any(lv <= 0.0) or np.any(lv >= 1.0):
        raise ValueError(f"interval levels must lie strictly inside (0, 1), got {level}")
    return np.asarray(ndtri(0.5 + 0.5 * lv), dtype=np.float64)


def mae(mean: ArrayInput, target: ArrayInput) -> float:
    """Mean absolute error of the predictive mean."""
    mu, y = _mean_target(mean, target)
    return float(np.mean(np.abs(mu - y)))


def rmse(mean: ArrayInput, target: ArrayInput) -> float:
    """Root mean squared error of the predictive mean."""
    mu, y = _mean_target(mean, target)
    return float(np.sqrt(np.mean((mu - y) ** 2)))


def gaussian_nll(mean: ArrayInput, variance: ArrayInput, target: ArrayInput) -> float:
    """Mean Gaussian negative log-likelihood, ``0.5*log(2*pi*var) + (y - mu)^2 / (2*var)``.

    The constant ``0.5*log(2*pi)`` is included (unlike ``torch.nn.GaussianNLLLoss``'s default) so the
    numbers are comparable with published UCI-regression results.
    """
    mu, sigma, y = _prepare(mean, variance, target)
    var = sigma**2
    return float(np.mean(0.5 * np.log(2.0 * math.pi * var) + (y - mu) ** 2 / (2.0 * var)))


def picp(mean: ArrayInput, variance: ArrayInput, target: ArrayInput, level: float = 0.9) -> float:
    """Prediction-interval coverage probability: fraction of targets inside the central ``level`` interval
    ``mu +- z*sigma`` (endpoints included). A calibrated model gives about ``level``."""
    mu, sigma, y = _prepare(mean, variance, target)
    z = _z_for_level(level)
    return float(np.mean(np.abs(y - mu) <= z * sigma))


def mpiw(variance: ArrayInput, level: float = 0.9) -> float:
    """Mean width ``2*z*sigma`` of the central ``level`` interval.

    Only the variance matters, so it is the only array taken; read it next to :func:`picp`, since wide
    intervals buy coverage for free.
    """
    sigma = _std(variance)
    z = _z_for_level(level)
    return float(np.mean(2.0 * z * sigma))


def crps_gaussian(mean: ArrayInput, variance: ArrayInput, target: ArrayInput) -> float:
    """Mean continuous ranked probability score of N(mu, sigma^2) at y, closed form of
    Gneiting & Raftery (2007): ``sigma * [z*(2*Phi(z) - 1) + 2*phi(z) - 1/sqrt(pi)]`` with
    ``z = (y - mu)/sigma``. Lower is better; it reduces to the absolute error as sigma -> 0.
    """
    mu, sigma, y = _prepare(mean, variance, target)
    z = (y - mu) / sigma
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    cdf = ndtr(z)
    crps = sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    return float(np.mean(crps))


def regression_calibration_error(
    mean: ArrayInput,
    variance: ArrayInput,
    target: ArrayInput,
    levels: ArrayInput | None = None,
) -> float:
    """Mean absolute gap between nominal and observed coverage of central intervals.

    ``levels`` defaults to 0.05, 0.10, ..., 0.95 (``np.linspace(0.05, 0.95, 19)``). Unlike PICP at one
    level, this catches a model that is right at 90% but wrong in the body of the distribution.
    """
    mu, sigma, y = _prepare(mean, variance, target)
    lv = np.asarray(DEFAULT_CALIBRATION_LEVELS if levels is None else to_numpy(levels), dtype=np.float64)
    if lv.ndim != 1 or lv.size == 0:
        raise ValueError(f"levels must be a non-empty 1-D sequence, got shape {lv.shape}")
    z = _z_for_level(lv)  # (L,)
    abs_z = np.sort(np.abs(y - mu) / sigma)
    # count of |z_i| <= z_level for every level at once, without an (L, N) matrix
    observed = np.searchsorted(abs_z, z, side="right") / abs_z.size
    return float(np.mean(np.abs(observed - lv)))


def interval_scale(mean: ArrayInput, variance: ArrayInput, target: ArrayInput, level: float = 0.9) -> float:
    """Width factor c such that ``mu +- c*z*sigma`` covers exactly ``level`` of these (validation) targets.

    Post-hoc interval recalibration (the one-parameter case of Kuleshov et al. 2018, "Accurate
    uncertainties for deep learning using calibrated regression"; equivalently split-conformal with the
    normalised score |y - mu| / sigma). Why it is needed: a Gaussian likelihood fitted to heavy-tailed
    errors inflates sigma to pay for the rare large misses, so the raw 90 % interval over-covers.
    """
    mu, sigma, y = _prepare(mean, variance, target)
    z = _z_for_level(level)
    return float(np.quantile(np.abs(y - mu) / sigma, level) / z)


def regression_report(
    mean: ArrayInput,
    variance: ArrayInput,
    target: ArrayInput,
    level: float = 0.9,
    levels: ArrayInput | None = None,
    scale: float = 1.0,
) -> dict[str, float]:
    """All regression metrics in one dict so experiment logs always carry the same set.

    Keys: mae, rmse, nll, picp, mpiw, crps, calibration_error, interval_level (the ``level`` that
    ``picp`` and ``mpiw`` refer to, kept in the dict so a logged 0.9 is never mistaken for a 0.95),
    interval_scale (``scale``: the checkpoint's validation-fitted width factor, see
    :func:`interval_scale`), picp/mpiw of the interval scaled by it, and picp_raw/mpiw_raw of the
    unscaled model interval. NLL, CRPS and calibration_error are always of the raw predictive.
    """
    scaled_var = np.asarray(to_numpy(variance), dtype=np.float64) * scale**2
    return {
        "mae": mae(mean, target),
        "rmse": rmse(mean, target),
        "nll": gaussian_nll(mean, variance, target),
        "picp": picp(mean, scaled_var, target, level=level),
        "mpiw": mpiw(scaled_var, level=level),
        "picp_raw": picp(mean, variance, target, level=level),
        "mpiw_raw": mpiw(variance, level=level),
        "interval_scale": float(scale),
        "crps": crps_gaussian(mean, variance, target),
        "calibration_error": regression_calibration_error(mean, variance, target, levels=levels),
        "interval_level": float(level),
    }
