"""Split-conformal coverage (``model_core.conformal``) on generated exchangeable data, many repetitions.

The guarantee under test: with n exchangeable calibration scores without ties and
k = ceil((n + 1)·level), a new example is covered with probability exactly k / (n + 1), which lies in
[level, level + 1/(n + 1)). Each repetition draws a fresh calibration set of n rows and a test batch of
m rows; its coverage C_r (the fraction of the batch covered) is independent across repetitions, so the
mean over R repetitions has standard error sd(C_r) / sqrt(R), estimated from the repetitions. The
tolerance is 4 of those standard errors (≈ 0.005 at n = 100, m = 50, R = 2000): a correct
implementation fails a seeded run with probability < 1e-4, while an off-by-one order statistic
(e.g. ceil(n·level), coverage 90/101 ≈ 0.891) falls outside.

Given the calibration set, the coverage is Beta(k, n + 1 - k) distributed, so sd(C_r)^2 is
Var(Beta) + E[c(1 - c)] / m; the tests check the empirical spread against that too (within 20 %, the
sd of an sd estimated from 2000 draws being ≈ 2 %).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from model_core.checkpoint.manifest import Calibration, ConformalCalibration, OODScore
from model_core.conformal import (
    SERVED_INTERVAL_LEVEL,
    conformal_quantile,
    interval_scores,
    label_scores,
    prediction_sets,
    served_interval,
)
from model_core.data import load_csv
from model_core.data.dataset import TabularSplits
from model_core.training.pipeline import CALIBRATION_FRACTION, split_calibration

REPS = 2000
N_CAL = 100
M_TEST = 50


def _expected_coverage(n: int, level: float) -> float:
    return math.ceil((n + 1) * level) / (n + 1)


def _beta_sd(n: int, level: float, m: int) -> float:
    """sd of one repetition's batch coverage: Beta(k, n + 1 - k) given calibration, plus binomial(m)."""
    k = math.ceil((n + 1) * level)
    a, b = k, n + 1 - k
    mean = a / (a + b)
    var_beta = a * b / ((a + b) ** 2 * (a + b + 1))
    e_c1c = mean * (1 - mean) - var_beta  # E[c(1-c)] = E[c] - E[c]^2 - Var(c)
    return math.sqrt(var_beta + e_c1c / m)


def _check_coverage(cover: np.ndarray, n: int, level: float, m: int) -> None:
    """cover: (R, m) booleans. Mean within [level - tol, level + 1/(n + 1) + tol], tol = 4 se."""
    per_rep = cover.mean(axis=1)
    se = float(per_rep.std(ddof=1)) / math.sqrt(len(per_rep))
    tol = 4 * se
    mean = float(per_rep.mean())
    assert level - tol <= mean <= level + 1.0 / (n + 1) + tol, (mean, tol)
    assert abs(mean - _expected_coverage(n, level)) <= tol
    theory = _beta_sd(n, level, m)
    assert abs(float(per_rep.std(ddof=1)) / theory - 1.0) < 0.2


def _regression_draw(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heteroscedastic heavy-tailed data and a biased, mis-scaled Gaussian model: (y, mean, variance)."""
    x = rng.uniform(-2.0, 2.0, rows)
    truth_sd = 0.1 + 0.5 * np.abs(x)
    y = np.sin(x) + 0.5 * x + truth_sd * rng.standard_t(5, rows)
    mean = np.sin(x) + 0.5 * x + 0.1
    variance = (0.8 * truth_sd) ** 2
    return y, mean, variance


@pytest.mark.parametrize(("level", "n"), [(0.9, N_CAL), (0.8, 49)])
def test_regression_interval_coverage_over_repetitions(level: float, n: int) -> None:
    """Normalised-residual intervals mean ± q̂·sd cover y with mean coverage in
    [level - tol, level + 1/(n + 1) + tol] over 2000 repetitions (tol: module docstring), under
    heteroscedastic Student-t noise and a model whose mean is biased and whose sd is 20 % too small."""
    rng = np.random.default_rng(10)
    cover = np.empty((REPS, M_TEST), dtype=bool)
    for r in range(REPS):
        y, mean, var = _regression_draw(rng, n + M_TEST)
        q = conformal_quantile(interval_scores(y[:n], mean[:n], var[:n]), level)
        assert math.isfinite(q)
        sd = np.sqrt(var[n:])
        lo, hi = mean[n:] - q * sd, mean[n:] + q * sd
        cover[r] = (lo <= y[n:]) & (y[n:] <= hi)
    _check_coverage(cover, n, level, M_TEST)


def _multiclass_draw(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes from a softmax of a linear map; the model's probabilities are a tempered, shifted
    softmax of it (miscalibrated, as a real model is). Returns (labels, model probabilities)."""
    x = rng.normal(size=(rows, 2))
    logits = x @ np.array([[2.0, -1.0, 0.0], [0.0, 1.5, -1.5]])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random(rows)[:, None] > np.cumsum(p, axis=1)).sum(1)
    model = np.exp(0.6 * logits + np.array([0.2, 0.0, -0.2]))
    return y, model / model.sum(1, keepdims=True)


def test_multiclass_prediction_set_coverage_over_repetitions() -> None:
    """LAC sets {k : 1 - p̂(k) <= q̂} (``label_scores`` / ``prediction_sets``) contain the true label
    with mean coverage in [0.9 - tol, 0.9 + 1/101 + tol] over 2000 repetitions of n = 100."""
    level, n = 0.9, N_CAL
    rng = np.random.default_rng(11)
    cover = np.empty((REPS, M_TEST), dtype=bool)
    sizes = []
    for r in range(REPS):
        y, probs = _multiclass_draw(rng, n + M_TEST)
        q = conformal_quantile(label_scores(y[:n], probs[:n]), level)
        sets = prediction_sets(probs[n:], q)
        assert sets.shape == (M_TEST, 3)
        cover[r] = sets[np.arange(M_TEST), y[n:]]
        sizes.append(sets.sum(1).mean())
    _check_coverage(cover, n, level, M_TEST)
    assert 1.0 < float(np.mean(sizes)) < 3.0  # informative sets: neither singletons always nor all labels


def test_binary_prediction_set_coverage_over_repetitions() -> None:
    """A binary task's (n,) P(positive) means: the sets are (n, 2), a row's set is exactly the labels
    with p̂ >= 1 - q̂, and coverage is as in the multiclass test (level 0.9, n = 100, 2000 repetitions)."""
    level, n = 0.9, N_CAL
    rng = np.random.default_rng(12)
    cover = np.empty((REPS, M_TEST), dtype=bool)
    for r in range(REPS):
        x = rng.normal(size=n + M_TEST)
        y = (rng.random(n + M_TEST) < 1 / (1 + np.exp(-3.0 * x))).astype(np.int64)
        p_hat = 1 / (1 + np.exp(-(2.0 * x + 0.3)))
        q = conformal_quantile(label_scores(y[:n], p_hat[:n]), level)
        sets = prediction_sets(p_hat[n:], q)
        assert sets.shape == (M_TEST, 2)
        both = np.stack([1 - p_hat[n:], p_hat[n:]], axis=1)
        np.testing.assert_array_equal(sets, both >= 1 - q)
        cover[r] = sets[np.arange(M_TEST), y[n:]]
    _check_coverage(cover, n, level, M_TEST)


def test_calibration_rows_at_or_below_the_quantile_are_in_their_sets() -> None:
    """The set's boundary is closed, as the guarantee needs: a calibration example whose score equals q̂
    has its own label in the set, so in-sample at least ceil((n + 1)·level) of n calibration examples
    are covered (exactly that many without ties), for multiclass and binary means."""
    rng = np.random.default_rng(15)
    for level, n in ((0.9, 100), (0.8, 37)):
        y, probs = _multiclass_draw(rng, n)
        q = conformal_quantile(label_scores(y, probs), level)
        covered = prediction_sets(probs, q)[np.arange(n), y]
        assert int(covered.sum()) == math.ceil((n + 1) * level)
        x = rng.normal(size=n)
        yb = (rng.random(n) < 0.5).astype(np.int64)
        pb = 1 / (1 + np.exp(-x))
        qb = conformal_quantile(label_scores(yb, pb), level)
        assert int(prediction_sets(pb, qb)[np.arange(n), yb].sum()) == math.ceil((n + 1) * level)


def test_label_scores_are_one_minus_the_true_label_probability() -> None:
    """label_scores(y, mean) = 1 - p̂(y): for binary (n,) means, p̂(1) = mean, p̂(0) = 1 - mean."""
    p = np.array([0.1, 0.7, 0.5, 0.99])
    y = np.array([1, 0, 1, 1])
    np.testing.assert_allclose(label_scores(y, p), [0.9, 0.7, 0.5, 0.01 + 0.0], atol=1e-12)
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    np.testing.assert_allclose(label_scores(np.array([2, 0]), probs), [0.7, 0.4], atol=1e-12)


def test_conformal_quantile_is_the_order_statistic() -> None:
    """q̂ equals the ceil((n + 1)·level)-th smallest score (a direct sort), over random sizes and levels,
    including ties and 2-D input (flattened)."""
    rng = np.random.default_rng(13)
    for _ in range(500):
        n = int(rng.integers(1, 400))
        level = float(rng.uniform(0.01, 0.99))
        s = rng.standard_exponential(n) if rng.random() < 0.5 else rng.integers(0, 5, n).astype(float)
        k = math.ceil((n + 1) * level)
        expected = float(np.sort(s)[k - 1]) if k <= n else math.inf
        assert conformal_quantile(s, level) == expected
    s = rng.random((10, 10))
    assert conformal_quantile(s, 0.5) == float(np.sort(s.ravel())[math.ceil(101 * 0.5) - 1])


def test_conformal_quantile_matches_crepes() -> None:
    """crepes' ConformalRegressor (normalised, y_hat = 0, sigma = 1) gives the interval ±q̂ with the same
    order statistic, and its maximum-size (inf) interval exactly when ours is inf. Levels where
    (n + 1)·level is within 1e-6 of an integer are skipped (the two round 1 - level differently there)."""
    crepes = pytest.importorskip("crepes")
    rng = np.random.default_rng(14)
    checked = 0
    for _ in range(200):
        n = int(rng.integers(2, 300))
        level = float(rng.uniform(0.5, 0.99))
        if abs((n + 1) * level - round((n + 1) * level)) < 1e-6:
            continue
        y, mean, var = _regression_draw(rng, n)
        ours = conformal_quantile(interval_scores(y, mean, var), level)
        cr = crepes.ConformalRegressor().fit(residuals=y - mean, sigmas=np.sqrt(var))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interval = cr.predict_int(y_hat=np.zeros(1), sigmas=np.ones(1), confidence=level)
        assert interval[0, 1] == pytest.approx(ours, rel=1e-12)
        checked += 1
    assert checked > 150


@pytest.mark.parametrize(
    ("n", "level", "finite"),
    [(2, 0.75, False), (3, 0.75, True), (8, 0.9, False), (9, 0.9, True), (18, 0.95, False), (19, 0.95, True)],
)
def test_conformal_quantile_is_inf_when_n_is_too_small(n: int, level: float, finite: bool) -> None:
    """q̂ is inf exactly when ceil((n + 1)·level) > n, i.e. n < level / (1 - level); an inf q̂ makes the
    interval unbounded and every label a member of the set (coverage 1, the only honest answer)."""
    s = np.linspace(0.1, 1.0, n)
    q = conformal_quantile(s, level)
    assert math.isfinite(q) == finite
    if finite:
        assert q == s.max()
    else:
        assert prediction_sets(np.array([[0.99, 0.01], [0.0, 1.0]]), q).all()


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_conformal_quantile_rejects_bad_levels(level: float) -> None:
    """A level outside (0, 1) (NaN included) is an error, not a silent 0 or inf."""
    with pytest.raises(ValueError, match="level"):
        conformal_quantile(np.arange(10.0), level)


@pytest.mark.parametrize("scores", [np.array([]), np.array([0.1, np.nan]), np.array([0.1, np.inf])])
def test_conformal_quantile_rejects_bad_scores(scores: np.ndarray) -> None:
    """Empty or non-finite calibration scores are an error."""
    with pytest.raises(ValueError, match="finite"):
        conformal_quantile(scores, 0.9)


def _calibration(conformal_q: float | None, scale_90: float | None) -> Calibration:
    return Calibration(
        ood_score=OODScore.PREDICTIVE_STD,
        ood_threshold=1.0,
        conformal=None
        if conformal_q is None
        else ConformalCalibration(
            level=SERVED_INTERVAL_LEVEL, score="normalized_residual", quantile=conformal_q, n=99
        ),
        interval_scales={} if scale_90 is None else {"0.9": scale_90},
    )


def test_the_served_interval_is_the_conformal_one_where_the_manifest_has_it() -> None:
    mean, variance = np.array([10.0, -2.0]), np.array([4.0, 0.25])
    low, high = served_interval(_calibration(1.5, 2.0), mean, variance)
    assert low.dtype == np.float32 and high.dtype == np.float32
    np.testing.assert_allclose(low, [10.0 - 3.0, -2.0 - 0.75])
    np.testing.assert_allclose(high, [10.0 + 3.0, -2.0 + 0.75])


def test_an_older_checkpoint_gets_the_scaled_gaussian_90_percent_interval() -> None:
    z90 = 1.6448536269514722
    mean, variance = np.array([11.0]), np.array([5.0])
    low, high = served_interval(_calibration(None, 1.25), mean, variance)
    assert float(high[0] - low[0]) == pytest.approx(2 * 1.25 * z90 * math.sqrt(5), rel=1e-6)
    low, high = served_interval(_calibration(None, None), mean, variance)  # no factor: the model's own
    assert float(high[0] - low[0]) == pytest.approx(2 * z90 * math.sqrt(5), rel=1e-6)
    assert float((low[0] + high[0]) / 2) == pytest.approx(11.0)


def test_interval_scores_with_zero_variance_are_finite() -> None:
    """A zero (or negative, by rounding) variance is floored: scores stay finite and keep their order."""
    s = interval_scores(np.array([1.0, 2.0, 1.0]), np.array([1.0, 1.0, 0.5]), np.array([0.0, 0.0, -1e-30]))
    assert np.isfinite(s).all()
    assert s[0] == 0.0 and s[1] > s[2] > 0.0
    np.testing.assert_allclose(interval_scores(np.array([3.0]), np.array([1.0]), np.array([4.0])), [1.0])


# ------------------------------------------------------------------ the calibration split


@pytest.fixture(scope="module")
def splits(toy_csv: Path) -> TabularSplits:
    return load_csv(toy_csv, "label")


def test_split_calibration_partitions_the_validation_split(splits: TabularSplits) -> None:
    """The calibration rows and the rows kept for early stopping are disjoint, together are the whole
    validation split, the calibration split is round(0.5·n) rows, and each side carries the matching
    network input, novelty (unclipped) input and label; train and test are untouched."""
    # a distinguishable unclipped validation input, so the novelty side is seen to come from it
    splits = dataclasses.replace(splits, unclipped={**splits.unclipped, "val": splits.x_val + 100.0})
    fit, cal = split_calibration(splits, seed=0)
    n = len(splits.y_val)
    positions = cal.positions
    assert len(positions) == round(CALIBRATION_FRACTION * n) == len(cal.y) == len(cal.x) == len(cal.z)
    assert len(np.unique(positions)) == len(positions) and (np.diff(positions) > 0).all()
    keep = np.setdiff1d(np.arange(n), positions)
    assert len(keep) + len(positions) == n and len(fit.y_val) == len(keep)
    np.testing.assert_array_equal(cal.x, splits.x_val[positions])
    np.testing.assert_array_equal(cal.y, splits.y_val[positions])
    np.testing.assert_array_equal(cal.z, splits.unclipped["val"][positions])
    np.testing.assert_array_equal(fit.x_val, splits.x_val[keep])
    np.testing.assert_array_equal(fit.y_val, splits.y_val[keep])
    np.testing.assert_array_equal(fit.novelty_input("val"), splits.unclipped["val"][keep])
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(fit, name), getattr(splits, name))


def test_split_calibration_is_seeded(splits: TabularSplits) -> None:
    """The same seed gives the same calibration rows; another seed other rows (for 90 validation rows,
    two seeds picking the same 45 has probability 1 / C(90, 45) ≈ 1e-26); the fraction is honoured."""
    a = split_calibration(splits, seed=3)[1].positions
    b = split_calibration(splits, seed=3)[1].positions
    c = split_calibration(splits, seed=4)[1].positions
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    n = len(splits.y_val)
    assert len(split_calibration(splits, seed=3, fraction=0.3)[1].positions) == round(0.3 * n)


@pytest.mark.parametrize(("rows", "fraction"), [(3, 0.5), (2, 0.5), (40, 0.02), (40, 0.98)])
def test_split_calibration_refuses_a_too_small_split(
    splits: TabularSplits, rows: int, fraction: float
) -> None:
    """Fewer than two calibration rows or fewer than two early-stopping rows: a ValueError, not an empty
    calibration (the conformal q̂ and thresholds would be undefined)."""
    small = dataclasses.replace(
        splits,
        x_val=splits.x_val[:rows],
        y_val=splits.y_val[:rows],
        unclipped={k: (v[:rows] if k == "val" else v) for k, v in splits.unclipped.items()},
    )
    with pytest.raises(ValueError, match="too small"):
        split_calibration(small, seed=0, fraction=fraction)
