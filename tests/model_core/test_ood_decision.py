"""The joint OOD calibration (``model_core.ood``) against generated data whose answer is known.

Generators: continuous scores (uniform or Gaussian, so no ties) and a rare implausible flag drawn
independently. For two independent uniform scores with common tail level t and an implausible rate p0,
the population false-alarm rate of "implausible, or either score in its top t" is
``R(t) = p0 + (1 - p0)(1 - (1 - t)^2)``, so the level that makes it alpha is
``t* = 1 - sqrt((1 - alpha) / (1 - p0))`` (with p0 = 0: ``1 - sqrt(1 - alpha)``); with two identical
scores it is ``t = alpha``. Tolerances are stated where used; all are >= 4 standard deviations, so a
correct implementation fails a seeded run with probability < 1e-4 per assertion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_core.ood import OODReason, combined_score, empirical_p, joint_thresholds, reasons

ALPHA = 0.05
N_CAL = 2000
N_FRESH = 400_000


def _uniform_rows(rng: np.random.Generator, n: int, p0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rng.random(n), rng.random(n), rng.random(n) < p0


def _flag(
    e: np.ndarray, v: np.ndarray | None, odd: np.ndarray | None, te: float, tv: float | None
) -> np.ndarray:
    """The combined rule, written out independently of ``model_core.ood``: strict exceedances."""
    out = e > te
    if v is not None and tv is not None:
        out = out | (v > tv)
    if odd is not None:
        out = out | odd
    return out


def _bernoulli_sd(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / n)


def test_combined_rate_on_calibration_split_is_at_most_alpha_and_within_one_step() -> None:
    """On the calibration rows themselves, the returned thresholds flag <= alpha of the rows, and
    > alpha - 2/n: raising the common level by one row (k -> k + 1) adds at most one newly flagged row
    per continuous detector, so the largest feasible level is within 2/n of alpha (no statistics). The
    reported ``calibration_rate`` is the rate the thresholds really give (recomputed here)."""
    rng = np.random.default_rng(0)
    for p0 in (0.0, 0.01, 0.03):
        e, v, odd = _uniform_rows(rng, N_CAL, p0)
        j = joint_thresholds(e, v, odd, alpha=ALPHA)
        assert j.novelty is not None
        rate = float(_flag(e, v, odd, j.epistemic, j.novelty).mean())
        assert rate == pytest.approx(j.calibration_rate, abs=0.0)
        assert ALPHA - 2.0 / N_CAL < rate <= ALPHA
        # each continuous detector flags exactly level * n calibration rows (no ties)
        assert int((e > j.epistemic).sum()) == round(j.level * N_CAL)
        assert int((v > j.novelty).sum()) == round(j.level * N_CAL)
        assert j.alpha == ALPHA


def test_epistemic_only_calibration() -> None:
    """Without a novelty detector the rule is "implausible or epistemic in its top t": the rate on
    the calibration split is <= alpha and > alpha - 1/n (one detector: one row per step)."""
    rng = np.random.default_rng(1)
    e, _, odd = _uniform_rows(rng, N_CAL, 0.01)
    j = joint_thresholds(e, None, odd, alpha=ALPHA)
    assert j.novelty is None
    rate = float(_flag(e, None, odd, j.epistemic, None).mean())
    assert ALPHA - 1.0 / N_CAL < rate <= ALPHA
    assert rate == j.calibration_rate


def test_known_answer_level_and_fresh_sample_rate() -> None:
    """Independent uniforms + implausible rate p0 = 0.01, n = 2000 calibration rows, alpha = 0.05.

    * Level: t* = 1 - sqrt((1 - alpha)/(1 - p0)). The empirical rate at a fixed level fluctuates
      with sd <= sigma_n = sqrt(alpha(1 - alpha)/n) (a Bernoulli(alpha) proportion of n rows; the
      marginal counts are fixed exactly, so this bounds it), and dR/dt = 2(1 - p0)(1 - t), so
      |t - t*| <= 4 sigma_n / (2(1 - p0)(1 - t*)) + 2/n (the 2/n: the one-step granularity).
    * Population rate of the chosen thresholds, exact for uniforms, R = p0 + (1 - p0)(1 - te·tv):
      within 4 sigma_n + 2/n of alpha (quantile estimation error of n rows).
    * A fresh sample of m = 400 000 rows from the same generator: its flagged fraction within
      4 sigma_n + 2/n + 4 sqrt(alpha(1 - alpha)/m) of alpha (estimation error + sampling error).
    """
    p0 = 0.01
    rng = np.random.default_rng(2)
    e, v, odd = _uniform_rows(rng, N_CAL, p0)
    j = joint_thresholds(e, v, odd, alpha=ALPHA)
    assert j.novelty is not None
    t_star = 1.0 - math.sqrt((1.0 - ALPHA) / (1.0 - p0))
    sigma_n = _bernoulli_sd(ALPHA, N_CAL)
    assert abs(j.level - t_star) <= 4 * sigma_n / (2 * (1 - p0) * (1 - t_star)) + 2.0 / N_CAL

    population = p0 + (1.0 - p0) * (1.0 - j.epistemic * j.novelty)
    estimation = 4 * sigma_n + 2.0 / N_CAL
    assert abs(population - ALPHA) <= estimation

    fe, fv, fodd = _uniform_rows(rng, N_FRESH, p0)
    fresh = float(_flag(fe, fv, fodd, j.epistemic, j.novelty).mean())
    assert abs(fresh - ALPHA) <= estimation + 4 * _bernoulli_sd(ALPHA, N_FRESH)


def test_population_rate_over_repetitions_matches_the_derived_tolerance() -> None:
    """Checks the tolerance model above: over 300 independent calibration sets (n = 2000, p0 = 0.01),
    the exact population rate of the chosen thresholds has mean within 2/n + 4·sd/sqrt(300) of alpha
    and a spread (sd) below 1.5 sigma_n (sigma_n = sqrt(alpha(1 - alpha)/n); the chi-square spread of
    an sd estimated from 300 draws is ~4 % at 1 sd, so 1.5x only fails when the model is wrong)."""
    p0, reps = 0.01, 300
    rng = np.random.default_rng(3)
    rates = np.empty(reps)
    for r in range(reps):
        e, v, odd = _uniform_rows(rng, N_CAL, p0)
        j = joint_thresholds(e, v, odd, alpha=ALPHA)
        assert j.novelty is not None
        rates[r] = p0 + (1.0 - p0) * (1.0 - j.epistemic * j.novelty)
    sigma_n = _bernoulli_sd(ALPHA, N_CAL)
    sd = float(rates.std(ddof=1))
    assert sd < 1.5 * sigma_n
    assert abs(float(rates.mean()) - ALPHA) <= 2.0 / N_CAL + 4 * sd / math.sqrt(reps)


def test_perfectly_correlated_scores_give_level_alpha() -> None:
    """Two scores that order the rows identically (v a strictly increasing map of e) flag the same rows,
    so the combined rate at k rows per detector is k/n and the level is exactly floor(alpha·n)/n."""
    rng = np.random.default_rng(4)
    for n in (1000, 2000, 1237):
        e = rng.normal(size=n)
        v = 3.0 * np.exp(e) + 1.0
        j = joint_thresholds(e, v, None, alpha=ALPHA)
        assert j.level == math.floor(ALPHA * n + 1e-9) / n
        assert abs(j.level - ALPHA) < 1.0 / n


def test_independent_scores_give_level_one_minus_sqrt() -> None:
    """Independent continuous scores, no implausible flag: t ≈ 1 - sqrt(1 - alpha). At k = t·n rows
    per detector the overlap of the two top-k sets is hypergeometric with sd ≈ sqrt(n)·t(1 - t), the
    rate is (2k - overlap)/n with dR/dt = 2(1 - t), so sd(t) ≈ t / (2 sqrt(n)); tolerance 4 sd + 2/n."""
    rng = np.random.default_rng(5)
    for alpha, n in ((ALPHA, N_CAL), (0.1, 5000)):
        t_star = 1.0 - math.sqrt(1.0 - alpha)
        e, v = rng.normal(size=n), rng.standard_exponential(n)
        j = joint_thresholds(e, v, None, alpha=alpha)
        assert abs(j.level - t_star) <= 4 * t_star / (2 * math.sqrt(n)) + 2.0 / n


def test_implausible_rate_at_or_above_alpha_gives_the_most_conservative_answer() -> None:
    """When the implausible flag alone already flags >= alpha of the calibration rows (strictly more: no
    level is feasible), the answer is still valid: level 0, finite thresholds at the largest calibration
    score (so the continuous detectors flag no calibration row), and the reported rate is the
    implausible rate itself. With exactly alpha implausible, the level is the largest k whose newly
    flagged rows are all implausible already (0 here, as the top scores are plausible)."""
    rng = np.random.default_rng(6)
    n = 1000
    e, v = rng.random(n), rng.random(n)
    for p in (0.08, 0.5):
        odd = np.zeros(n, dtype=bool)
        odd[rng.choice(n, int(p * n), replace=False)] = True
        j = joint_thresholds(e, v, odd, alpha=ALPHA)
        assert j.novelty is not None
        assert j.level == 0.0
        assert math.isfinite(j.epistemic) and math.isfinite(j.novelty)
        assert j.epistemic >= e.max() and j.novelty >= v.max()
        assert not (e > j.epistemic).any() and not (v > j.novelty).any()
        assert j.calibration_rate == pytest.approx(odd.mean())
    odd = np.zeros(n, dtype=bool)
    low = np.argsort(e + v)[: int(ALPHA * n)]  # implausible rows among the low scores
    odd[low] = True
    j = joint_thresholds(e, v, odd, alpha=ALPHA)
    assert j.level == 0.0
    assert j.calibration_rate == pytest.approx(ALPHA)


def test_joint_calibration_flags_closer_to_alpha_than_bonferroni() -> None:
    """Positively correlated scores (Gaussian, rho = 0.9) + implausible rate 0.005: a Bonferroni split
    (each detector at its own alpha/2 calibration quantile) overlaps and under-flags, the joint level does
    not. n = 20 000 calibration rows (so the tolerance, ≈ 0.0077, is below Bonferroni's gap of ≈ 0.013).
    On a fresh sample of 400 000 rows: the joint rule's rate is within the known-answer test's
    estimation + sampling tolerance (4 sigma_n + 2/n + 4 sigma_m) of alpha, closer to alpha than
    Bonferroni's, and Bonferroni's rate is below alpha by more than that tolerance."""
    rho, p0, n_cal = 0.9, 0.005, 20_000
    rng = np.random.default_rng(7)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z1, z2 = rng.standard_normal(n), rng.standard_normal(n)
        return z1, rho * z1 + math.sqrt(1 - rho**2) * z2, rng.random(n) < p0

    e, v, odd = rows(n_cal)
    j = joint_thresholds(e, v, odd, alpha=ALPHA)
    assert j.novelty is not None
    assert j.level > ALPHA / 2  # overlap lets each detector take more than its Bonferroni share
    k = math.floor(ALPHA / 2 * n_cal)
    be, bv = float(np.sort(e)[::-1][k]), float(np.sort(v)[::-1][k])

    fe, fv, fodd = rows(N_FRESH)
    joint_rate = float(_flag(fe, fv, fodd, j.epistemic, j.novelty).mean())
    bonf_rate = float(_flag(fe, fv, fodd, be, bv).mean())
    tol = 4 * _bernoulli_sd(ALPHA, n_cal) + 2.0 / n_cal + 4 * _bernoulli_sd(ALPHA, N_FRESH)
    assert abs(joint_rate - ALPHA) <= tol
    assert abs(joint_rate - ALPHA) < abs(bonf_rate - ALPHA)
    assert bonf_rate < ALPHA - tol


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"epistemic": np.array([0.5])}, "two"),
        ({"epistemic": np.array([0.1, np.nan, 0.3])}, "finite"),
        ({"epistemic": np.array([0.1, np.inf, 0.3])}, "finite"),
        ({"novelty": np.array([0.1, 0.2])}, "novelty"),
        ({"novelty": np.array([0.1, np.nan, 0.3])}, "novelty"),
    ],
)
def test_joint_thresholds_rejects_bad_input(kwargs: dict[str, object], match: str) -> None:
    """Out-of-range alpha, fewer than two rows, non-finite scores and mismatched shapes are errors."""
    args: dict[str, object] = {
        "epistemic": np.array([0.1, 0.2, 0.3]),
        "novelty": np.array([1.0, 2.0, 3.0]),
        "alpha": ALPHA,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        joint_thresholds(**args)  # type: ignore[arg-type]


def test_empirical_p_is_the_conformal_p_value() -> None:
    """empirical_p(s) = (1 + #{ref >= s}) / (1 + n), checked against a direct count (ties included)."""
    rng = np.random.default_rng(8)
    ref = rng.integers(0, 20, 300).astype(np.float64)  # many ties
    s = np.concatenate([rng.integers(-2, 23, 200).astype(np.float64), ref[:10]])
    expected = np.array([(1 + np.sum(ref >= x)) / (1 + ref.size) for x in s])
    np.testing.assert_array_equal(empirical_p(s, ref), expected)
    assert empirical_p(np.array([ref.max() + 1]), ref)[0] == 1.0 / (1 + ref.size)
    assert empirical_p(np.array([ref.min() - 1]), ref)[0] == 1.0


def test_combined_score_ranks_implausible_rows_first_and_is_finite() -> None:
    """combined_score = -log10(min detector p-value) on plausible rows; every implausible row scores
    above every plausible one, even plausible rows beyond all reference scores (p = 1/(n + 1)), with
    reference sets of different sizes; all scores finite."""
    rng = np.random.default_rng(9)
    e_ref, v_ref = rng.random(100), rng.normal(size=1000)
    n = 500
    e, v = rng.random(n) * 1.2, rng.normal(size=n) * 1.5
    e[:5] = 10.0  # beyond every reference score: the smallest p-value possible
    v[5:10] = 100.0
    odd = rng.random(n) < 0.1
    odd[:10] = False
    odd[-3:] = True
    s = combined_score(e, e_ref, v, v_ref, odd)
    assert np.isfinite(s).all()
    assert s[odd].min() > s[~odd].max()
    p = np.minimum(empirical_p(e, e_ref), empirical_p(v, v_ref))
    np.testing.assert_allclose(s[~odd], -np.log10(p[~odd]), rtol=1e-12)
    # higher detector scores never lower the combined score (monotone in each detector)
    s2 = combined_score(e + 0.05, e_ref, v, v_ref, odd)
    assert (s2 >= s).all()
    # epistemic only: same ranking property
    s1 = combined_score(e, e_ref, implausible=odd)
    assert np.isfinite(s1).all() and s1[odd].min() > s1[~odd].max()


def test_reasons_lists_each_detector_that_fired_in_order() -> None:
    """All eight combinations of (epistemic, novelty, implausible) firing: the decision is their OR and
    the reasons are exactly those that fired, in ``OODReason`` order; a score equal to its threshold does
    not fire (strict exceedance, as in the calibration)."""
    te, tv = 0.5, 2.0
    combos = [(a, b, c) for a in (False, True) for b in (False, True) for c in (False, True)]
    e = np.array([0.9 if a else 0.1 for a, _, _ in combos] + [te])
    v = np.array([3.0 if b else 1.0 for _, b, _ in combos] + [tv])
    odd = np.array([c for _, _, c in combos] + [False])
    decision, why = reasons(e, te, v, tv, odd)
    names = [r.value for r in OODReason]
    assert names == ["epistemic", "novelty", "implausible"]
    for i, fired in enumerate(combos):
        assert why[i] == [name for name, f in zip(names, fired, strict=True) if f]
        assert bool(decision[i]) == any(fired)
    assert why[-1] == [] and not decision[-1]

    decision, why = reasons(e, te)  # epistemic only
    assert all(r in ([], ["epistemic"]) for r in why)
    np.testing.assert_array_equal(decision, e > te)
