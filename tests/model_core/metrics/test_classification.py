"""Classification metrics against hand-computed toy cases and known properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from model_core.metrics import (
    accuracy,
    aupr_err,
    aupr_succ,
    auprc,
    auroc,
    brier,
    classification_report,
    ece,
    nll,
    reliability_curve,
)

# Shared binary toy case.
#   p(y=1) = [0.9, 0.2, 0.6, 0.3], y = [1, 0, 0, 1]
#   predicted class (p > 0.5): [1, 0, 1, 0] -> correct = [T, T, F, F]
#   confidence max(p, 1-p) = [0.9, 0.8, 0.6, 0.7]
#   probability of the true class = [0.9, 0.8, 0.4, 0.3]
P = np.array([0.9, 0.2, 0.6, 0.3])
Y = np.array([1, 0, 0, 1])
# uncertainty: errors are examples 2 (u=0.8) and 3 (u=0.3)
U = np.array([0.1, 0.5, 0.8, 0.3])


def test_nll_hand_computed() -> None:
    # -(ln 0.9 + ln 0.8 + ln 0.4 + ln 0.3) / 4
    # = -(-0.1053605 - 0.2231436 - 0.9162907 - 1.2039728) / 4 = 2.4487676 / 4 = 0.6121919
    assert nll(P, Y) == pytest.approx(0.6121919, abs=1e-6)
    assert nll(P, Y) == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.3)) / 4)


def test_nll_eps_clips_zero_probability() -> None:
    # true class has probability 0 -> -ln(eps) = -ln(1e-12) = 27.631021 (instead of inf)
    assert nll(np.array([0.0]), np.array([1])) == pytest.approx(27.631021, abs=1e-5)
    assert nll(np.array([0.0]), np.array([1]), eps=1e-3) == pytest.approx(6.907755, abs=1e-6)


def test_accuracy_hand_computed() -> None:
    # correct = [T, T, F, F] -> 2 / 4
    assert accuracy(P, Y) == 0.5


def test_accuracy_tie_goes_to_class_zero() -> None:
    # p = 0.5 predicts class 0 (argmax of [0.5, 0.5] is the first index)
    assert accuracy(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert accuracy(np.array([0.5]), np.array([0])) == 1.0


def test_brier_binary_hand_computed() -> None:
    # (0.9-1)^2 + (0.2-0)^2 + (0.6-0)^2 + (0.3-1)^2 = 0.01 + 0.04 + 0.36 + 0.49 = 0.90 -> / 4 = 0.225
    assert brier(P, Y) == pytest.approx(0.225)


def test_brier_two_column_input_matches_binary_vector() -> None:
    two_col = np.stack([1 - P, P], axis=1)
    assert brier(two_col, Y) == pytest.approx(0.225)


def test_brier_multiclass_hand_computed() -> None:
    # ex 1 (y=0): (0.7-1)^2 + 0.2^2 + 0.1^2 = 0.09 + 0.04 + 0.01 = 0.14
    # ex 2 (y=1): 0.1^2 + (0.3-1)^2 + 0.6^2 = 0.01 + 0.49 + 0.36 = 0.86
    # mean = (0.14 + 0.86) / 2 = 0.5
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert brier(probs, np.array([0, 1])) == pytest.approx(0.5)


def test_nll_multiclass_hand_computed() -> None:
    # true-class probabilities 0.7 and 0.3: -(ln 0.7 + ln 0.3) / 2 = (0.3566749 + 1.2039728) / 2 = 0.7803239
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert nll(probs, np.array([0, 1])) == pytest.approx(0.7803239, abs=1e-6)


def test_auroc_hand_computed() -> None:
    # positives score {0.9, 0.3}, negatives {0.2, 0.6}
    # pairs pos > neg: 0.9>0.2 yes, 0.9>0.6 yes, 0.3>0.2 yes, 0.3>0.6 no -> 3/4
    assert auroc(P, Y) == pytest.approx(0.75)


def test_auprc_hand_computed() -> None:
    # ranking by p: 0.9 (pos) 0.6 (neg) 0.3 (pos) 0.2 (neg)
    # precision at each positive: 1/1, 2/3 -> AP = (1 + 2/3) / 2 = 5/6
    assert auprc(P, Y) == pytest.approx(5 / 6)


def test_aupr_err_succ_shared_case() -> None:
    # errors (positive for aupr_err) are examples 2, 3 with u = 0.8, 0.3
    # aupr_err, u descending: 0.8 (err) 0.5 (ok) 0.3 (err) 0.1 (ok) -> precisions 1, 2/3 -> AP 5/6
    assert aupr_err(P, Y, U) == pytest.approx(5 / 6)
    # aupr_succ, u ascending: 0.1 (ok) 0.3 (err) 0.5 (ok) 0.8 (err) -> precisions 1, 2/3 -> AP 5/6
    # (ranking successes by +u instead would give 0.5 here)
    assert aupr_succ(P, Y, U) == pytest.approx(5 / 6)


# Five-example case where aupr_err and aupr_succ differ.
#   p = [0.9, 0.8, 0.7, 0.4, 0.2], y = [1, 1, 0, 1, 0] -> predictions [1, 1, 1, 0, 0]
#   correct = [T, T, F, F, T]; uncertainty u = [0.3, 0.2, 0.6, 0.25, 0.5]
P5 = np.array([0.9, 0.8, 0.7, 0.4, 0.2])
Y5 = np.array([1, 1, 0, 1, 0])
U5 = np.array([0.3, 0.2, 0.6, 0.25, 0.5])


def test_aupr_err_hand_computed() -> None:
    # u descending: 0.6 (err) 0.5 (ok) 0.3 (ok) 0.25 (err) 0.2 (ok)
    # precision at errors: 1/1, 2/4 -> AP = (1 + 0.5) / 2 = 0.75
    assert aupr_err(P5, Y5, U5) == pytest.approx(0.75)


def test_aupr_succ_hand_computed() -> None:
    # ranked by -u, i.e. u ascending: 0.2 (ok) 0.25 (err) 0.3 (ok) 0.5 (ok) 0.6 (err)
    # precision at successes: 1/1, 2/3, 3/4 -> AP = (1 + 2/3 + 3/4) / 3 = 29/36 = 0.8055556
    assert aupr_succ(P5, Y5, U5) == pytest.approx(29 / 36)


def test_ece_hand_computed_default_bins() -> None:
    # With 15 bins of width 1/15 the confidences 0.6, 0.7, 0.8, 0.9 fall in four different bins, so
    # ECE = mean |acc - conf| = (|1-0.9| + |1-0.8| + |0-0.6| + |0-0.7|) / 4 = 1.6 / 4 = 0.4
    assert ece(P, Y) == pytest.approx(0.4)


def test_ece_hand_computed_two_bins() -> None:
    # 2 bins (0, .5], (.5, 1]: all four confidences in bin 2
    # mean conf = (0.9 + 0.8 + 0.6 + 0.7) / 4 = 0.75, accuracy = 0.5 -> ECE = 1.0 * |0.5 - 0.75| = 0.25
    assert ece(P, Y, n_bins=2) == pytest.approx(0.25)


def test_ece_known_miscalibration() -> None:
    # every prediction says p=0.9 for class 1 but only 6 of 10 are class 1:
    # one bin, conf 0.9, acc 0.6 -> ECE 0.3
    probs = np.full(10, 0.9)
    labels = np.array([1] * 6 + [0] * 4)
    assert ece(probs, labels) == pytest.approx(0.3)


def test_ece_multiclass_hand_computed() -> None:
    # conf = [0.5, 0.8, 0.4, 0.9], pred = [0, 1, 2, 0], y = [0, 0, 2, 0] -> correct [T, F, T, T]
    # 5 bins of width 0.2: 0.5 -> (0.4, 0.6], 0.8 -> (0.6, 0.8], 0.4 -> (0.2, 0.4], 0.9 -> (0.8, 1.0]
    # each bin has one example: ECE = (|1-0.5| + |0-0.8| + |1-0.4| + |1-0.9|) / 4 = 2.0 / 4 = 0.5
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]])
    assert ece(probs, np.array([0, 0, 2, 0]), n_bins=5) == pytest.approx(0.5)


def test_perfect_predictions_have_zero_ece_and_brier() -> None:
    labels = np.array([0, 2, 1, 1, 0])
    onehot = np.eye(3)[labels]
    assert ece(onehot, labels) == 0.0
    assert brier(onehot, labels) == 0.0
    assert accuracy(onehot, labels) == 1.0
    assert nll(onehot, labels) == pytest.approx(0.0, abs=1e-12)
    binary = np.array([1.0, 0.0, 1.0])
    assert ece(binary, np.array([1, 0, 1])) == 0.0
    assert brier(binary, np.array([1, 0, 1])) == 0.0


def test_ece_of_calibrated_sampler_is_small() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 1.0, size=100_000)
    labels = (rng.uniform(size=p.size) < p).astype(int)  # y ~ Bernoulli(p): calibrated by construction
    assert ece(p, labels) < 0.01
    # and a sharpened (overconfident) version of the same predictions is clearly miscalibrated
    sharp = np.clip(0.5 + 1.8 * (p - 0.5), 0.0, 1.0)
    assert ece(sharp, labels) > 0.1


def test_reliability_curve_hand_computed() -> None:
    curve = reliability_curve(P, Y, n_bins=2)
    # bin (0, 0.5] is empty; bin (0.5, 1] holds everything: mean conf 0.75, accuracy 0.5
    assert curve.counts.tolist() == [0, 4]
    assert math.isnan(curve.confidence[0]) and math.isnan(curve.accuracy[0])
    assert curve.confidence[1] == pytest.approx(0.75)
    assert curve.accuracy[1] == pytest.approx(0.5)
    conf, acc, counts = curve  # unpacks as (confidence mean, accuracy, count)
    assert conf[1] == curve.confidence[1] and acc[1] == curve.accuracy[1] and counts.sum() == 4


def test_reliability_curve_bins_are_left_open_right_closed() -> None:
    # edges 0, .25, .5, .75, 1: conf 0.5 -> (0.25, 0.5] (bin 1), 0.75 -> (0.5, 0.75] (bin 2), 1.0 -> bin 3.
    # A [lo, hi) convention would give [0, 0, 1, 2] instead.
    probs = np.array([[0.5, 0.5], [0.25, 0.75], [0.0, 1.0]])
    curve = reliability_curve(probs, np.array([0, 1, 1]), n_bins=4)
    assert curve.counts.tolist() == [0, 1, 1, 1]


def test_single_class_gives_nan_not_error() -> None:
    labels = np.ones(4, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nan quietly, without scikit-learn's UndefinedMetricWarning
        assert math.isnan(auroc(P, labels))
        assert math.isnan(auprc(P, labels))
        assert math.isnan(auroc(np.eye(3)[[0, 0]], np.array([0, 0])))
    # brier is still defined: (0.1^2 + 0.8^2 + 0.4^2 + 0.7^2) / 4 = (0.01 + 0.64 + 0.16 + 0.49) / 4 = 0.325
    assert brier(P, labels) == pytest.approx(0.325)


def test_aupr_err_succ_nan_when_no_errors_or_all_errors() -> None:
    right = (P > 0.5).astype(int)  # every prediction correct
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(aupr_err(P, right, U))
        assert math.isnan(aupr_succ(P, right, U))
        assert math.isnan(aupr_err(P, 1 - right, U))


def test_multiclass_auroc_auprc_skip_absent_class() -> None:
    # labels use classes 0 and 1 only; class 2 has no positives and is skipped.
    # class 0: pos rows 0,3 scores {0.6, 0.3}, neg rows 1,2 scores {0.2, 0.5}
    #   AUROC pairs: 0.6>0.2, 0.6>0.5, 0.3>0.2 yes; 0.3>0.5 no -> 0.75
    #   AP ranking 0.6(+) 0.5(-) 0.3(+) 0.2(-) -> (1 + 2/3) / 2 = 5/6
    # class 1: pos rows 1,2 scores {0.7, 0.4}, neg rows 0,3 scores {0.3, 0.35} -> AUROC 1, AP 1
    # macro: AUROC (0.75 + 1) / 2 = 0.875, AP (5/6 + 1) / 2 = 11/12
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.3, 0.35, 0.35]])
    labels = np.array([0, 1, 1, 0])
    assert auroc(probs, labels) == pytest.approx(0.875)
    assert auprc(probs, labels) == pytest.approx(11 / 12)


def test_classification_report_hand_computed() -> None:
    report = classification_report(P, Y, U)
    expected = {
        "nll": 0.6121919,
        "ece": 0.4,
        "brier": 0.225,
        "accuracy": 0.5,
        "auroc": 0.75,
        "auprc": 5 / 6,
        "aupr_err": 5 / 6,
        "aupr_succ": 5 / 6,
    }
    assert set(report) == set(expected)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, abs=1e-6), key
        assert isinstance(report[key], float)


def test_accepts_torch_tensors() -> None:
    p = torch.tensor(P, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(Y)
    assert brier(p, y) == pytest.approx(0.225, abs=1e-6)
    assert auroc(p, y) == pytest.approx(0.75)
    assert ece(p.to(torch.bfloat16), y, n_bins=2) == pytest.approx(0.25, abs=1e-2)


def test_rejects_logits_and_bad_labels() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        nll(np.array([2.0, -1.0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="sum to 1"):
        nll(np.array([[0.9, 0.9], [0.5, 0.5]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="labels"):
        nll(P, np.array([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="labels"):
        nll(P, np.array([0.5, 1, 0, 1]))
    with pytest.raises(ValueError, match="entries"):
        aupr_err(P, Y, U[:3])
