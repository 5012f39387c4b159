"""Gaussian regression metrics against hand-computed toy cases and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr, ndtri

from model_core.metrics import (
    crps_gaussian,
    gaussian_nll,
    interval_scale,
    mae,
    mpiw,
    picp,
    regression_calibration_error,
    regression_report,
    rmse,
)

# Shared toy case: mean, variance (sigma = 1, 2, 0.5), target.
#   residual y - mu = [1, 0, -2]; standardised z = [1, 0, -4]
MU = np.array([0.0, 1.0, 2.0])
VAR = np.array([1.0, 4.0, 0.25])
Y = np.array([1.0, 1.0, 0.0])
Z90 = 1.6448536269514722  # standard normal 95% quantile (table value), half-width of the 90% interval
HALF_LOG_2PI = 0.9189385332046727  # 0.5 * ln(2*pi)


def test_mae_hand_computed() -> None:
    # (|0-1| + |1-1| + |2-0|) / 3 = (1 + 0 + 2) / 3 = 1
    assert mae(MU, Y) == pytest.approx(1.0)


def test_rmse_hand_computed() -> None:
    # sqrt((1 + 0 + 4) / 3) = sqrt(5/3) = 1.2909944
    assert rmse(MU, Y) == pytest.approx(1.2909944, abs=1e-7)


def test_gaussian_nll_hand_computed() -> None:
    # ex 1: 0.5 ln(2 pi 1)    + 1^2 / (2*1)    = 0.9189385 + 0.5           = 1.4189385
    # ex 2: 0.5 ln(2 pi 4)    + 0              = 0.9189385 + ln 2          = 1.6120857
    # ex 3: 0.5 ln(2 pi 0.25) + 2^2 / (2*0.25) = 0.9189385 - ln 2 + 8      = 8.2257914
    # mean = 11.2568156 / 3 = 3.7522719
    assert gaussian_nll(MU, VAR, Y) == pytest.approx(3.7522719, abs=1e-6)


def test_gaussian_nll_matches_torch_full_loss() -> None:
    rng = np.random.default_rng(1)
    mu, var, y = rng.normal(size=50), rng.uniform(0.1, 3.0, size=50), rng.normal(size=50)
    ref = torch.nn.GaussianNLLLoss(full=True, eps=1e-12)(torch.tensor(mu), torch.tensor(y), torch.tensor(var))
    assert gaussian_nll(mu, var, y) == pytest.approx(float(ref), rel=1e-10)


def test_picp_hand_computed() -> None:
    # |z| = [1, 0, 4] vs 1.645: inside, inside, outside -> 2/3
    assert picp(MU, VAR, Y, level=0.9) == pytest.approx(2 / 3)
    # at level 0.5 the half-width is 0.6745 sigma: only z=0 is inside -> 1/3
    assert picp(MU, VAR, Y, level=0.5) == pytest.approx(1 / 3)


def test_mpiw_hand_computed() -> None:
    # 2 * 1.6448536 * mean(sigma) = 2 * 1.6448536 * (1 + 2 + 0.5) / 3 = 3.8379918
    assert mpiw(VAR, level=0.9) == pytest.approx(2 * Z90 * 3.5 / 3)
    assert mpiw(VAR, level=0.9) == pytest.approx(3.8379918, abs=1e-6)


def test_crps_hand_computed() -> None:
    # f(z) = z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi), CRPS = sigma f(z); 1/sqrt(pi) = 0.5641896
    # z=1:  1 * (2*0.8413447 - 1) + 2*0.2419707 - 0.5641896 = 0.6826895 + 0.4839414 - 0.5641896 = 0.6024414
    # z=0:  0 + 2*0.3989423 - 0.5641896 = 0.2336950, times sigma 2 = 0.4673900
    # z=-4: -4 * (2*0.0000317 - 1) + 2*0.0001338 - 0.5641896 = 3.9997466 + 0.0002677 - 0.5641896 = 3.4358247
    #       times sigma 0.5 = 1.7179124
    # mean = (0.6024414 + 0.4673900 + 1.7179124) / 3 = 0.9292479
    assert crps_gaussian(MU, VAR, Y) == pytest.approx(0.9292479, abs=1e-6)


@pytest.mark.parametrize(("mu", "sigma", "y"), [(0.0, 1.0, 0.3), (2.0, 0.5, -1.0), (-1.0, 3.0, 4.0)])
def test_crps_matches_numerical_integral(mu: float, sigma: float, y: float) -> None:
    # CRPS(F, y) = integral of (F(x) - 1{x >= y})^2 dx, by the trapezoid rule on a fine grid split at y
    lo, hi = min(mu - 12 * sigma, y - 1.0), max(mu + 12 * sigma, y + 1.0)
    left = np.linspace(lo, y, 200_001)
    right = np.linspace(y, hi, 200_001)
    integral = np.trapezoid(ndtr((left - mu) / sigma) ** 2, left) + np.trapezoid(
        (ndtr((right - mu) / sigma) - 1.0) ** 2, right
    )
    assert crps_gaussian([mu], [sigma**2], [y]) == pytest.approx(integral, abs=1e-7)


def test_crps_tends_to_absolute_error_for_tiny_variance() -> None:
    assert crps_gaussian(MU, np.full(3, 1e-14), Y) == pytest.approx(mae(MU, Y), abs=1e-6)


def test_calibration_error_hand_computed_two_levels() -> None:
    # |z| = [1, 0, 4]; half-widths: level 0.5 -> 0.6745, level 0.9 -> 1.6449
    # observed coverage: 0.5 -> 1/3 (only z=0), 0.9 -> 2/3 (z=0, z=1)
    # mean |observed - nominal| = (|1/3 - 0.5| + |2/3 - 0.9|) / 2 = (0.1666667 + 0.2333333) / 2 = 0.2
    assert regression_calibration_error(MU, VAR, Y, levels=[0.5, 0.9]) == pytest.approx(0.2)


def test_calibration_error_hand_computed_default_levels() -> None:
    # levels 0.05..0.95; |z|=1 is inside iff level >= 2*Phi(1)-1 = 0.6827, i.e. levels 0.70..0.95
    # observed = 1/3 for the 13 levels 0.05..0.65, 2/3 for the 6 levels 0.70..0.95
    # sum |obs - l|: levels .05-.30: 6/3 - 1.05 = 0.95; levels .35-.65: 3.5 - 7/3 = 1.1666667;
    #                levels .70-.95: 4.95 - 6*2/3 = 0.95 -> total 3.0666667, / 19 = 0.1614035
    assert regression_calibration_error(MU, VAR, Y) == pytest.approx(0.1614035, abs=1e-6)


def test_calibration_error_agrees_with_picp_including_interval_endpoints() -> None:
    # target 0 sits exactly on the upper end of the central 50% interval of N(0, 1) (z = ndtri(0.75));
    # picp counts endpoints as covered, and so must the calibration error: coverage 1/2 at level 0.5 -> 0
    edge = float(ndtri(0.75))
    mu, var, y = np.array([0.0, 0.0]), np.ones(2), np.array([edge, 10.0])
    assert picp(mu, var, y, level=0.5) == 0.5
    assert regression_calibration_error(mu, var, y, levels=[0.5]) == 0.0


def test_huge_variance_covers_everything_and_tiny_variance_nothing() -> None:
    assert picp(MU, np.full(3, 1e12), Y, level=0.5) == 1.0
    # exact hits (residual 0) stay inside even a tiny interval; the two misses fall out
    assert picp(MU, np.full(3, 1e-12), Y, level=0.99) == pytest.approx(1 / 3)


def test_calibrated_gaussian_sampler() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    mu = rng.normal(size=n)
    var = rng.uniform(0.5, 2.0, size=n)
    y = mu + np.sqrt(var) * rng.normal(size=n)
    assert picp(mu, var, y, level=0.9) == pytest.approx(0.9, abs=0.005)
    assert regression_calibration_error(mu, var, y) < 0.005
    # an overconfident model (variance / 4) is clearly miscalibrated
    assert regression_calibration_error(mu, var / 4, y) > 0.1


def test_regression_report_keys_and_values() -> None:
    report = regression_report(MU, VAR, Y, level=0.9)
    expected = {
        "mae": 1.0,
        "rmse": 1.2909944,
        "nll": 3.7522719,
        "picp": 2 / 3,
        "mpiw": 3.8379918,
        "crps": 0.9292479,
        "calibration_error": 0.1614035,
        "interval_level": 0.9,
        "picp_raw": 2 / 3,
        "mpiw_raw": 3.8379918,
        "interval_scale": 1.0,
    }
    assert set(report) == set(expected)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, abs=1e-6), key


def test_accepts_torch_tensors() -> None:
    mu = torch.tensor(MU, dtype=torch.float32, requires_grad=True)
    assert mae(mu, torch.tensor(Y)) == pytest.approx(1.0)
    assert crps_gaussian(mu, torch.tensor(VAR), torch.tensor(Y)) == pytest.approx(0.9292479, abs=1e-6)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="strictly positive"):
        gaussian_nll(MU, np.array([1.0, 0.0, 1.0]), Y)
    with pytest.raises(ValueError, match="1-D"):
        mae(MU[:, None], Y)
    with pytest.raises(ValueError, match="length mismatch"):
        picp(MU, VAR, Y[:2])
    with pytest.raises(ValueError, match="inside"):
        picp(MU, VAR, Y, level=1.0)
    with pytest.raises(ValueError, match="NaN"):
        rmse(np.array([0.0, math.nan, 1.0]), Y)


def test_interval_scale_recalibrates_an_overdispersed_model() -> None:
    """Fitted on one half, the width factor brings the other half's coverage to the nominal level."""
    rng = np.random.default_rng(3)
    n = 20_000
    mu = rng.normal(size=n)
    var = rng.uniform(0.5, 2.0, size=n)
    y = mu + np.sqrt(var) * rng.standard_t(df=3, size=n) / np.sqrt(3.0)  # heavy tails, unit variance
    assert picp(mu, var, y, level=0.9) > 0.92  # the Gaussian interval over-covers the body
    c = interval_scale(mu[: n // 2], var[: n // 2], y[: n // 2], level=0.9)
    assert 0.6 < c < 1.0
    report = regression_report(mu[n // 2 :], var[n // 2 :], y[n // 2 :], level=0.9, scale=c)
    assert report["picp"] == pytest.approx(0.9, abs=0.01)
    assert report["picp_raw"] > 0.92
    assert report["mpiw"] == pytest.approx(c * report["mpiw_raw"])
    assert interval_scale(mu, var, mu + np.sqrt(var) * rng.normal(size=n)) == pytest.approx(1.0, abs=0.03)
