"""Evaluate a checkpoint on its data set's test and OOD splits (``lrbnn evaluate``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model_core.checkpoint.io import LoadedCheckpoint
from model_core.checkpoint.manifest import Manifest, Task
from model_core.conformal import REPORT_INTERVAL_LEVEL, gaussian_half_width, prediction_sets
from model_core.data.air import SequenceSplits
from model_core.data.dataset import TabularSplits
from model_core.data.sentiment import TextSplits
from model_core.metrics import classification_report, ood_report, regression_report, selective_risk
from model_core.novelty import NoveltyDetector
from model_core.ood import combined_score, reasons
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
    unclipped = dict(splits.unclipped)
    for split in ("test", "ood"):
        if split in unclipped and len(unclipped[split]):
            unclipped[split] = unclipped[split][subset_rows(len(unclipped[split]), rows)]
    shifts = {name: z[subset_rows(len(z), rows)] for name, z in splits.shifts.items() if len(z)}
    return dataclasses.replace(splits, **changes, unclipped=unclipped, shifts=shifts)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def evaluate_predictions(
    task: Task,
    test: Prediction,
    y_test: np.ndarray,
    ood: Prediction | None,
    interval_scale: float = 1.0,
    interval_level: float = REPORT_INTERVAL_LEVEL,
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


@dataclass(frozen=True)
class Scored:
    """One evaluated set's detector inputs: epistemic and novelty scores, implausible rows."""

    epistemic: np.ndarray
    novelty: np.ndarray | None
    implausible: np.ndarray | None


def _scored(
    pred: Prediction, z: np.ndarray, splits: TabularSplits, novelty: NoveltyDetector | None
) -> Scored:
    odd = None if isinstance(splits, TextSplits) else splits.preprocessor.implausible_rows(z)
    return Scored(_np(pred.ood_score), None if novelty is None else novelty.score(z), odd)


def _decide(manifest: Manifest, s: Scored) -> np.ndarray:
    cal = manifest.calibration
    nov = cal.novelty
    flag, _ = reasons(
        s.epistemic, cal.ood_threshold, s.novelty, None if nov is None else nov.threshold, s.implausible
    )
    return flag


def _combined(manifest: Manifest, s: Scored) -> np.ndarray:
    cal = manifest.calibration
    ref_nov = None if cal.novelty is None else np.asarray(cal.novelty.quantiles)
    return combined_score(
        s.epistemic, np.asarray(manifest.drift_reference.quantiles), s.novelty, ref_nov, s.implausible
    )


def shift_report(manifest: Manifest, test: Scored, shifted: Scored) -> dict[str, float]:
    """OOD metrics of one shift set against the test split, per detector and for the served decision.

    ``ood_auroc`` etc.: the epistemic score (as before); ``novelty_auroc``; ``combined_auroc`` (the
    smallest calibrated p-value, :func:`model_core.ood.combined_score`); ``detect_epistemic`` /
    ``detect_novelty``: the fraction flagged by that detector alone at its own calibration (1 − α)
    quantile; ``flag_rate_out`` / ``flag_rate_in``: the served decision (jointly calibrated thresholds,
    implausible values included) on the shift set and on the test split.
    """
    cal = manifest.calibration
    alpha = cal.ood_alpha
    out = dict(ood_report(test.epistemic, shifted.epistemic))
    epi_alone = float(np.quantile(manifest.drift_reference.quantiles, 1.0 - alpha))
    out["detect_epistemic"] = float((shifted.epistemic > epi_alone).mean())
    out["false_alarm_epistemic"] = float((test.epistemic > epi_alone).mean())
    if test.novelty is not None and shifted.novelty is not None and cal.novelty is not None:
        out["novelty_auroc"] = ood_report(test.novelty, shifted.novelty)["ood_auroc"]
        nov_alone = float(np.quantile(cal.novelty.quantiles, 1.0 - alpha))
        out["detect_novelty"] = float((shifted.novelty > nov_alone).mean())
        out["false_alarm_novelty"] = float((test.novelty > nov_alone).mean())
    out["combined_auroc"] = ood_report(_combined(manifest, test), _combined(manifest, shifted))["ood_auroc"]
    out["flag_rate_in"] = float(_decide(manifest, test).mean())
    out["flag_rate_out"] = float(_decide(manifest, shifted).mean())
    return out


def conformal_report(manifest: Manifest, pred: Prediction, y: np.ndarray) -> dict[str, float]:
    """Empirical coverage of the conformal interval / set on ``y`` (and, for regression, the width of
    the conformal interval against the validation-scaled Gaussian interval it replaces)."""
    conf = manifest.calibration.conformal
    if conf is None:
        return {}
    mean, sd = _np(pred.mean), np.sqrt(_np(pred.variance))
    if manifest.task is Task.REGRESSION:
        half = conf.quantile * sd
        cover = np.abs(y - mean) <= half
        scaled = gaussian_half_width(
            sd, conf.level, manifest.calibration.interval_scales.get(str(conf.level), 1.0)
        )
        return {
            "level": conf.level,
            "conformal_coverage": float(cover.mean()),
            "conformal_width": float((2 * half).mean()),
            "scaled_coverage": float((np.abs(y - mean) <= scaled).mean()),
            "scaled_width": float((2 * scaled).mean()),
        }
    sets = prediction_sets(mean, conf.quantile)
    size = sets.sum(1)
    return {
        "level": conf.level,
        "set_coverage": float(sets[np.arange(len(y)), np.asarray(y, dtype=np.int64)].mean()),
        "refer_rate": float((size >= 2).mean()),
        "empty_rate": float((size == 0).mean()),
        "mean_set_size": float(size.mean()),
    }


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
    novelty = ckpt.novelty
    pre_clip = not isinstance(splits, TextSplits)
    test_s = _scored(test, splits.novelty_input("test"), splits, novelty)
    report["conformal"] = conformal_report(manifest, test, splits.y_test)
    if ood is not None:
        ood_s = _scored(ood, splits.novelty_input("ood"), splits, novelty)
        report["ood"] = shift_report(manifest, test_s, ood_s)
        if isinstance(splits, SequenceSplits) and splits.fault_names:
            report["ood"].update(_auroc_by_fault(splits, test, ood))
    near_x = getattr(splits, "x_near_ood", None)  # text tasks: a second, near-OOD set
    if near_x is not None and len(near_x):
        near = predict(ckpt.model, torch.from_numpy(near_x), samples=s, seed=seed + 2)
        report["ood_near"] = shift_report(manifest, test_s, _scored(near, near_x, splits, novelty))
    for k, (name, z) in enumerate(sorted(splits.shifts.items())):  # constructed shift sets
        x = splits.preprocessor.clip(z) if pre_clip else z
        shifted = predict(ckpt.model, torch.from_numpy(x), samples=s, seed=seed + 3 + k)
        report[f"ood_{name}"] = shift_report(manifest, test_s, _scored(shifted, z, splits, novelty))
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


#: Seeds of Monte Carlo replicate ``r`` start at ``seed + r * REPLICATE_SEED_STRIDE``: each evaluation
#: uses ``seed`` .. ``seed + 3 + shifts``, so replicates never share a noise stream.
REPLICATE_SEED_STRIDE = 1000


def monte_carlo_error(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per metric, the standard deviation over evaluations that differ only in the prediction noise
    (ddof = 1): how much a metric at this S moves from one set of S weight draws to another, i.e. the
    Monte Carlo error of each reported value. Nested sections are kept; non-numeric entries dropped."""
    if len(reports) < 2:
        raise ValueError("the Monte Carlo error needs at least two replicates")
    out: dict[str, Any] = {}
    for key, first in reports[0].items():
        values = [r.get(key) for r in reports]
        if isinstance(first, Mapping):
            nested = monte_carlo_error([v for v in values if isinstance(v, Mapping)])
            if nested:
                out[key] = nested
        elif isinstance(first, (int, float)) and not isinstance(first, bool) and key != "samples":
            numbers = np.array([float(v) for v in values if isinstance(v, (int, float))])
            if len(numbers) == len(reports) and np.isfinite(numbers).all():
                out[key] = 0.0 if (numbers == numbers[0]).all() else float(numbers.std(ddof=1))
    return out
