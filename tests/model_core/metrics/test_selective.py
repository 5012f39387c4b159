"""Selective-prediction metrics against hand-computed toy cases and known properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_core.metrics import area_under_risk_coverage, selective_curve, selective_risk

# 10 examples; sorted by uncertainty the errors are 0,0,0,0,0,0,1,1,1,1 (a perfect ranking)
ERRORS = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 1], dtype=float)
UNC = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.4, 0.5, 0.6, 0.95])


def test_selective_risk_hand_computed() -> None:
    # kept k = ceil(r * 10): 1.0 -> 10, 0.95 -> 10, 0.9 -> 9, 0.85 -> 9, 0.8 -> 8, 0.75 -> 8, 0.7 -> 7
    # errors among kept: 4/10, 4/10, 3/9, 3/9, 2/8, 2/8, 1/7
    risks = selective_risk(ERRORS, UNC)
    expected = {1.0: 0.4, 0.95: 0.4, 0.9: 1 / 3, 0.85: 1 / 3, 0.8: 0.25, 0.75: 0.25, 0.7: 1 / 7}
    assert list(risks) == list(expected)
    for r, value in expected.items():
        assert risks[r] == pytest.approx(value), r


def test_selective_risk_float_noise_does_not_keep_an_extra_example() -> None:
    # 0.55 * 100 is 55.00000000000001 in floating point; ceil must still give 55, not 56.
    # Sorted errors are 55 zeros then 45 ones: keeping 55 -> risk 0 (56 would give 1/56).
    errors = np.array([0.0] * 55 + [1.0] * 45)
    unc = np.arange(100, dtype=float)
    assert selective_risk(errors, unc, retentions=(0.55,))[0.55] == 0.0


def test_selective_risk_ties_broken_by_index() -> None:
    # all uncertainties equal: the stable sort keeps the original order [1, 0, 0, 0]
    # r=0.25 -> k=1 -> [1] -> 1.0; r=0.5 -> [1, 0] -> 0.5; r=0.75 -> [1, 0, 0] -> 1/3
    errors = np.array([1.0, 0.0, 0.0, 0.0])
    risks = selective_risk(errors, np.full(4, 0.5), retentions=(0.25, 0.5, 0.75))
    assert risks == pytest.approx({0.25: 1.0, 0.5: 0.5, 0.75: 1 / 3})


def test_selective_risk_at_full_retention_is_mean_error() -> None:
    rng = np.random.default_rng(0)
    losses = rng.exponential(size=1000)
    unc = rng.normal(size=1000)
    assert selective_risk(losses, unc, retentions=(1.0,))[1.0] == pytest.approx(float(np.mean(losses)))


def test_selective_curve_and_aurc_hand_computed() -> None:
    # uncertainty order: idx 1 (0.1), idx 2 (0.2), idx 0 (0.3) -> losses 2.0, 1.0, 0.5
    # risk at k=1,2,3: 2.0, (2+1)/2 = 1.5, (2+1+0.5)/3 = 1.1666667; retention 1/3, 2/3, 1
    # AURC = mean risk = (2 + 1.5 + 7/6) / 3 = 14/9 = 1.5555556
    losses = np.array([0.5, 2.0, 1.0])
    unc = np.array([0.3, 0.1, 0.2])
    retention, risk = selective_curve(losses, unc)
    np.testing.assert_allclose(retention, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(risk, [2.0, 1.5, 7 / 6])
    assert area_under_risk_coverage(losses, unc) == pytest.approx(14 / 9)


def test_informative_uncertainty_beats_random() -> None:
    rng = np.random.default_rng(0)
    errors = (rng.uniform(size=2000) < 0.3).astype(float)
    oracle = errors + 0.01 * rng.uniform(size=2000)  # errors are the most uncertain
    random_unc = rng.uniform(size=2000)
    # oracle: the 70% least uncertain contain 1400 of the 1400+ correct examples (if there are enough)
    n_correct = int((errors == 0).sum())
    assert selective_risk(errors, oracle, retentions=(n_correct / 2000,))[n_correct / 2000] == 0.0
    assert area_under_risk_coverage(errors, oracle) < area_under_risk_coverage(errors, random_unc)
    _, risk = selective_curve(errors, oracle)
    assert np.all(np.diff(risk) >= -1e-12)  # risk only grows as more uncertain examples are admitted


def test_accepts_torch_tensors() -> None:
    risks = selective_risk(torch.tensor(ERRORS), torch.tensor(UNC, requires_grad=True), retentions=(0.7,))
    assert risks[0.7] == pytest.approx(1 / 7)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="retention"):
        selective_risk(ERRORS, UNC, retentions=(0.0,))
    with pytest.raises(ValueError, match="length mismatch"):
        selective_curve(ERRORS, UNC[:5])
