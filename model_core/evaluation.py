"""Evaluate a checkpoint on its data set's test and OOD splits (``lrbnn evaluate``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from model_core.checkpoint.io import LoadedCheckpoint
from model_core.checkpoint.manifest import Task
from model_core.data.air import SequenceSplits
from model_core.data.dataset import TabularSplits
from model_core.metrics import classification_report, ood_report, regression_report, selective_risk
from model_core.predict import Prediction, predict

#: the splits ``evaluate_checkpoint`` predicts, and the per-row arrays that go with each
_EVALUATED = {
    "test": ("x_test", "y_test"),
    "ood": ("x_ood", "y_ood", "ood_fault"),
    "near_ood": ("x_near_ood",),
}


def subset_rows(n: int, rows: int) -> np.ndarray:
    """``rows`` evenly spaced positions of ``range(n)`` (all of them when ``rows >= n``).

    Evenly spaced rather than the first ``rows``: a split ordered by source (the air shift set is one
    block per sensor fault) keeps every part in the subset.
    """
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    if rows >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, rows).round().astype(np.int64))


def subset_splits(splits: TabularSplits, rows: int) -> TabularSplits:
    """The same splits with only ``subset_rows(n, rows)`` of each evaluated split (test, OOD, near-OOD).

    Why: a reproduction check of a large model (the sentiment Transformer's 7,000 evaluated texts take
    minutes on two cores) proves the same thing on a fixed subset whose metrics the manifest records.
    """
    changes: dict[str, Any] = {}
    for names in _EVALUATED.values():
        arrays = {name: getattr(splits, name) for name in names if hasattr(splits, name)}
        if not arrays:
            continue
        n = len(arrays[names[0]])
        keep = subset_rows(n, rows)
        for name, array in arrays.items():
            if len(array) == n:  # ood_fault may be empty (no faults recorded)
                changes[name] = array[keep]
    return dataclasses.replace(splits, **changes)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def evaluate_predictions(
    task: Task,
    test: Prediction,
    y_test: np.ndarray,
    ood: Prediction | None,
    interval_scale: float = 1.0,
    interval_level: float = 0.95,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if task is Task.REGRESSION:
        out["test"] = regression_report(
            _np(test.mean), _np(test.variance), y_test, level=interval_level, scale=interval_scale
        )
        errors = np.abs(_np(test.mean) - y_test)
    else:
        probs = _np(test.mean)
        out["test"] = classification_report(probs, y_test, _np(test.epistemic))
        errors = ((probs >= 0.5).astype(np.int64) != y_test).astype(np.float64)
    out["selective"] = {f"{k:.2f}": v for k, v in selective_risk(errors, _np(test.variance)).items()}
    if ood is not None and len(ood) > 0:
        out["ood"] = ood_report(_np(test.ood_score), _np(ood.ood_score))
    return out


def _auroc_by_fault(splits: SequenceSplits, test: Prediction, ood: Prediction) -> dict[str, float]:
    """OOD AUROC of each sensor fault of a sequence task's shift set (flat keys ``auroc_<fault>``)."""
    codes = np.asarray(splits.ood_fault)
    out: dict[str, float] = {}
    for k, name in enumerate(splits.fault_names):
        chosen = codes == k
        if chosen.any():
            scores = _np(ood.ood_score)[chosen]
            out[f"auroc_{name}"] = ood_report(_np(test.ood_score), scores)["ood_auroc"]
    return out


def evaluate_checkpoint(
    ckpt: LoadedCheckpoint,
    splits: TabularSplits,
    samples: int | None = None,
    seed: int = 0,
    keep: dict[str, Prediction] | None = None,
    rows: int | None = None,
) -> dict[str, Any]:
    """Metrics on the test, OOD (and near-OOD) sets; ``keep`` receives the predictions ("test", "ood")
    for callers that also plot them, so they need not be sampled twice. ``rows``: only that many evenly
    spaced rows of each evaluated split (:func:`subset_splits`), for a quick reproduction check."""
    manifest = ckpt.manifest
    if rows is not None:
        splits = subset_splits(splits, rows)
    s = samples or manifest.calibration.default_samples
    x_test = torch.from_numpy(splits.x_test)
    test = predict(ckpt.model, x_test, samples=s, seed=seed)
    ood = (
        predict(ckpt.model, torch.from_numpy(splits.x_ood), samples=s, seed=seed + 1)
        if len(splits.y_ood)
        else None
    )
    if keep is not None:
        keep["test"] = test
        if ood is not None:
            keep["ood"] = ood
    report = evaluate_predictions(
        manifest.task,
        test,
        splits.y_test,
        ood,
        interval_scale=manifest.calibration.interval_scale,
        interval_level=manifest.calibration.interval_level,
    )
    if ood is not None:
        report["ood"]["flag_rate_in"] = float(
            (test.ood_score > manifest.calibration.ood_threshold).float().mean()
        )
        report["ood"]["flag_rate_out"] = float(
            (ood.ood_score > manifest.calibration.ood_threshold).float().mean()
        )
        if isinstance(splits, SequenceSplits) and splits.fault_names:
            report["ood"].update(_auroc_by_fault(splits, test, ood))
    near_x = getattr(splits, "x_near_ood", None)  # text tasks: a second, near-OOD set
    if near_x is not None and len(near_x):
        near = predict(ckpt.model, torch.from_numpy(near_x), samples=s, seed=seed + 2)
        threshold = manifest.calibration.ood_threshold
        report["ood_near"] = {
            **ood_report(_np(test.ood_score), _np(near.ood_score)),
            "flag_rate_in": float((test.ood_score > threshold).float().mean()),
            "flag_rate_out": float((near.ood_score > threshold).float().mean()),
        }
    report.update(
        {
            "model_name": manifest.model_name,
            "model_version": manifest.model_version,
            "method": manifest.architecture.method.value,
            "parameter_count": manifest.parameter_count,
            "samples": s,
            "dataset": splits.dataset,
            "split_sizes": splits.sizes,
            "rows": rows,
            "ece_binning": "15 equal-width confidence bins",
        }
    )
    return report
