"""OOD detection metrics against hand-computed toy cases and known properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model_core.metrics import fpr_at_tpr, ood_report

# Toy case: in-distribution and OOD scores (higher = more OOD)
S_IN = np.array([0.1, 0.2, 0.4, 0.8])
S_OUT = np.array([0.3, 0.5, 0.7, 0.9])


def test_ood_report_hand_computed() -> None:
    report = ood_report(S_IN, S_OUT)
    assert set(report) == {"ood_auroc", "aupr_ood", "aupr_in", "score_ratio", "fpr_at_95_tpr"}
    # AUROC: pairs (out > in) out of 16: 0.3 beats 2, 0.5 beats 3, 0.7 beats 3, 0.9 beats 4 -> 12/16
    assert report["ood_auroc"] == pytest.approx(0.75)
    # AUPR-OOD: descending 0.9(o) 0.8(i) 0.7(o) 0.5(o) 0.4(i) 0.3(o) 0.2(i) 0.1(i)
    #   precision at each OOD: 1/1, 2/3, 3/4, 4/6 -> (1 + 2/3 + 3/4 + 2/3) / 4 = 37/48 = 0.7708333
    assert report["aupr_ood"] == pytest.approx(37 / 48)
    # AUPR-In: ranked by -score, i.e. ascending 0.1(i) 0.2(i) 0.3(o) 0.4(i) 0.5(o) 0.7(o) 0.8(i) 0.9(o)
    #   precision at each in-dist: 1/1, 2/2, 3/4, 4/7 -> (1 + 1 + 3/4 + 4/7) / 4 = 93/112 = 0.8303571
    assert report["aupr_in"] == pytest.approx(93 / 112)
    # ratio of means: (0.3+0.5+0.7+0.9)/4 = 0.6 over (0.1+0.2+0.4+0.8)/4 = 0.375 -> 1.6
    assert report["score_ratio"] == pytest.approx(1.6)
    # 95% of 4 OOD points needs all 4 flagged -> threshold 0.3 -> in-dist >= 0.3: {0.4, 0.8} -> 2/4
    assert report["fpr_at_95_tpr"] == pytest.approx(0.5)


def test_fpr_at_95_tpr_exact_boundary() -> None:
    # 20 OOD scores 1..20: TPR >= 0.95 needs 19 flagged -> threshold 2 (scores 2..20)
    # in-dist scores >= 2: {2.5, 100} out of 4 -> FPR 0.5. (Flagging all 20 would give 3/4.)
    s_out = np.arange(1, 21, dtype=float)
    s_in = np.array([0.5, 1.5, 2.5, 100.0])
    assert fpr_at_tpr(s_in, s_out, tpr=0.95) == pytest.approx(0.5)
    # TPR >= 0.5 needs 10 flagged -> threshold 11 -> only 100 is above -> 1/4
    assert fpr_at_tpr(s_in, s_out, tpr=0.5) == pytest.approx(0.25)


def test_separated_scores_are_perfect() -> None:
    rng = np.random.default_rng(0)
    s_in = rng.uniform(0.0, 1.0, size=500)
    s_out = rng.uniform(2.0, 3.0, size=300)
    report = ood_report(s_in, s_out)
    assert report["ood_auroc"] == 1.0
    assert report["aupr_ood"] == pytest.approx(1.0)
    assert report["aupr_in"] == pytest.approx(1.0)
    assert report["fpr_at_95_tpr"] == 0.0
    # reversed scores are perfectly wrong
    assert ood_report(s_out, s_in)["ood_auroc"] == 0.0


def test_identical_distributions_are_chance() -> None:
    rng = np.random.default_rng(0)
    s_in = rng.exponential(size=5000)
    s_out = rng.exponential(size=5000)
    report = ood_report(s_in, s_out)
    assert report["ood_auroc"] == pytest.approx(0.5, abs=0.03)
    # with balanced classes a chance-level AP is about the positive fraction, 0.5
    assert report["aupr_ood"] == pytest.approx(0.5, abs=0.03)
    assert report["aupr_in"] == pytest.approx(0.5, abs=0.03)
    assert report["fpr_at_95_tpr"] == pytest.approx(0.95, abs=0.02)
    assert report["score_ratio"] == pytest.approx(1.0, abs=0.06)


def test_score_ratio_nan_when_in_mean_is_zero() -> None:
    report = ood_report(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert math.isnan(report["score_ratio"])
    assert report["ood_auroc"] == 1.0


def test_accepts_torch_tensors() -> None:
    report = ood_report(torch.tensor(S_IN, requires_grad=True), torch.tensor(S_OUT, dtype=torch.float32))
    assert report["ood_auroc"] == pytest.approx(0.75)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        ood_report(np.array([]), S_OUT)
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(S_IN, S_OUT, tpr=0.0)
