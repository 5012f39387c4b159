"""Fitting the ``auto`` rule's CPU cost model (``backends.CpuCostModel``) to measured sampling times, and
how often a cost model picks the fastest candidate (``lrbnn bench sampling --fit``)."""

from __future__ import annotations

from typing import Any

import torch

from model_core.sampling.backends import COST_MODEL, CpuCostModel, estimated_seconds, work
from model_core.sampling.types import Backend

FIT_BACKENDS = (Backend.LRT, Backend.LRT_A, Backend.FACTORED)


def fit_cost_model(records: list[dict[str, Any]]) -> CpuCostModel:
    """Seconds per normal, per multiply-add and per elementwise op that best explain the measured times of
    the ``auto`` candidates (least squares on relative errors, coefficients kept non-negative)."""
    rows, times = [], []
    for rec in records:
        if rec["backend"] in {b.value for b in FIT_BACKENDS} and rec.get("median_s"):
            b = Backend(rec["backend"])
            rows.append(
                [float(v) for v in work(b, rec["batch"], rec["samples"], rec["m"], rec["n"], rec["r"], True)]
            )
            times.append(rec["median_s"])
    if not rows:
        return CpuCostModel()
    a = torch.tensor(rows, dtype=torch.float64)
    t = torch.tensor(times, dtype=torch.float64)
    a, ones = a / t[:, None], torch.ones_like(t)
    active = [0, 1, 2]
    coef = torch.zeros(3, dtype=torch.float64)
    while active:
        sol = torch.linalg.lstsq(a[:, active], ones[:, None]).solution[:, 0]
        if (sol >= 0).all():
            coef[active] = sol
            break
        active = [k for k, v in zip(active, sol.tolist(), strict=True) if v > 0]
    return CpuCostModel(normal_s=float(coef[0]), mac_s=float(coef[1]), elementwise_s=float(coef[2]))


def auto_agreement(records: list[dict[str, Any]], model: CpuCostModel | None = None) -> list[dict[str, Any]]:
    """Per shape: the measured fastest ``auto`` candidate, the one the cost model picks, and the loss."""
    model = model or COST_MODEL
    cases: dict[tuple, dict[str, float]] = {}
    for rec in records:
        if rec["backend"] in {b.value for b in FIT_BACKENDS} and rec.get("median_s"):
            key = (rec["m"], rec["n"], rec["r"], rec["batch"], rec["samples"])
            cases.setdefault(key, {})[rec["backend"]] = rec["median_s"]
    out = []
    for (m, n, r, batch, samples), times in cases.items():
        pick = min(
            FIT_BACKENDS, key=lambda b: estimated_seconds(b, batch, samples, m, n, r, True, model)
        ).value
        best = min(times, key=lambda k: times[k])
        out.append(
            {
                "m": m,
                "n": n,
                "r": r,
                "batch": batch,
                "samples": samples,
                "fastest": best,
                "picked": pick,
                "slowdown": times.get(pick, float("nan")) / times[best],
            }
        )
    return out
