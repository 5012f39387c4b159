"""Evaluation metrics for predictive uncertainty: classification, Gaussian regression, OOD detection and
selective prediction.

All functions take numpy arrays or torch tensors (any device/dtype), compute in float64 numpy and
return plain Python floats (or numpy arrays for curves), so results can be logged or serialised as is.
"""

from model_core.metrics.classification import (
    ReliabilityCurve,
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
from model_core.metrics.ood import fpr_at_tpr, ood_report
from model_core.metrics.regression import (
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
from model_core.metrics.selective import area_under_risk_coverage, selective_curve, selective_risk

__all__ = [
    "ReliabilityCurve",
    "accuracy",
    "area_under_risk_coverage",
    "aupr_err",
    "aupr_succ",
    "auprc",
    "auroc",
    "brier",
    "classification_report",
    "crps_gaussian",
    "ece",
    "fpr_at_tpr",
    "gaussian_nll",
    "interval_scale",
    "mae",
    "mpiw",
    "nll",
    "ood_report",
    "picp",
    "regression_calibration_error",
    "regression_report",
    "reliability_curve",
    "rmse",
    "selective_curve",
    "selective_risk",
]
