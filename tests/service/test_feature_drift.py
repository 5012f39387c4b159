"""Per-feature drift: the reference a training run stores, the binning, the window's PSI / KS against a
direct computation, and a unit error moving exactly the gauge of the feature it changed."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import toy
from service_helpers import ServeApp, metric_value, served_model

from model_core.checkpoint.manifest import FeatureDistribution
from model_core.data.preprocessing import Preprocessor
from model_core.feature_reference import REFERENCE_QUANTILES, FeatureBinner, fit_feature_reference
from service.monitoring.drift import PSI_FLOOR
from service.monitoring.feature_drift import FeatureDriftMonitor, FeatureWindowState

PREDICT = "/v1/models/toy:predict"


def _toy_rows(n: int = 600, seed: int = 0) -> list[dict[str, Any]]:
    """The toy model's own training distribution, as raw request rows (missing creatinine omitted)."""
    path = toy.write_csv(Path(tempfile.mkdtemp()) / "toy.csv", rows=n, seed=seed)
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {
                "age": float(r["age"]),
                "heart_rate": float(r["heart_rate"]),
                "sex": r["sex"],
            }
            if r["creatinine"]:
                row["creatinine"] = float(r["creatinine"])
            rows.append(row)
    return rows


def _pre_and_z(rows: list[dict[str, Any]]) -> tuple[Preprocessor, np.ndarray]:
    import pandas as pd

    frame = pd.DataFrame(rows)
    pre = Preprocessor.fit(frame, ["age", "heart_rate", "creatinine", "sex"], categorical=["sex"])
    return pre, pre.transform(rows, clip=False)[0]


def test_reference_and_bins_match_numpy() -> None:
    rows = _toy_rows()
    pre, z = _pre_and_z(rows)
    refs = fit_feature_reference(pre, z)
    assert [r.name for r in refs] == ["age", "heart_rate", "creatinine", "sex"]
    age = refs[0]
    assert age.kind == "numeric" and len(age.quantiles or []) == REFERENCE_QUANTILES
    assert age.quantiles == pytest.approx(
        np.quantile(z[:, 0].astype(np.float64), np.linspace(0, 1, 101)).tolist()
    )
    sex = refs[3]
    assert sex.kind == "categorical" and sum(sex.proportions or []) == pytest.approx(1.0)
    binner = FeatureBinner.tabular(pre, refs)
    probe = pre.transform([*rows[:50], {"age": 1e6, "sex": "other"}], clip=False)[0]
    bins = binner.bin(probe)
    for j in range(3):  # numeric: the number of reference quantiles strictly below the value
        expected = np.searchsorted(np.asarray(refs[j].quantiles), probe[:, j].astype(np.float64), side="left")
        assert bins[:, j].tolist() == expected.tolist()
    categories = pre.spec("sex").categories or []
    assert bins[:50, 3].tolist() == [categories.index(r["sex"]) for r in rows[:50]]
    assert bins[50, 3] == len(categories) and bins[50, 0] == REFERENCE_QUANTILES  # unseen; above all
    with pytest.raises(ValueError, match="do not match"):
        FeatureBinner.tabular(pre, refs[::-1])


def _direct_numeric(values: np.ndarray, q: np.ndarray, train: np.ndarray) -> tuple[float, float]:
    """PSI over the reference deciles and KS at the reference quantiles, straight from the values and
    the training column (its share at or below each quantile)."""
    n = q.size
    ref_cdf = np.array([(train <= qj).mean() for qj in q])
    cdf = np.array([(values <= qj).mean() for qj in q])
    ks = float(np.abs(cdf - ref_cdf).max())
    edges = np.round(np.linspace(0, n - 1, 11)[1:-1]).astype(int)
    p_w = np.diff(np.r_[0.0, [(values <= q[e]).mean() for e in edges], 1.0])
    p_r = np.diff(np.r_[0.0, ref_cdf[edges], 1.0])
    p_w, p_r = np.maximum(p_w, PSI_FLOOR), np.maximum(p_r, PSI_FLOOR)
    return float(((p_w - p_r) * np.log(p_w / p_r)).sum()), ks


def test_window_statistics_equal_a_direct_computation_after_eviction() -> None:
    rows = _toy_rows()
    pre, z = _pre_and_z(rows)
    refs = fit_feature_reference(pre, z[:400])
    monitor = FeatureDriftMonitor(FeatureBinner.tabular(pre, refs), window=150)
    rng = np.random.default_rng(3)
    shifted = [dict(r, age=float(r["age"]) * 1.3) for r in rows[400:]]
    stream = pre.transform(shifted, clip=False)[0]
    sent = []
    for size in rng.integers(1, 40, 30):  # uneven batches, the window wraps several times
        take = stream[rng.integers(0, len(stream), size)]
        monitor.add(take)
        sent.append(take)
    last = np.concatenate(sent)[-150:]
    state = monitor.state()
    assert state.filled == 150
    stats = monitor.stats_of(state)
    for j, name in enumerate(["age", "heart_rate", "creatinine"]):
        train = z[:400, j].astype(np.float64)
        psi, ks = _direct_numeric(last[:, j].astype(np.float64), np.asarray(refs[j].quantiles), train)
        assert stats[name]["psi"] == pytest.approx(psi, abs=1e-12)
        assert stats[name]["ks"] == pytest.approx(ks, abs=1e-12)
    categories = pre.spec("sex").categories or []
    share = np.array([(last[:, 3 + k] > 0.5).mean() for k in range(len(categories))] + [0.0])
    ref = np.array([*(refs[3].proportions or []), 0.0])
    p_w, p_r = np.maximum(share, PSI_FLOOR), np.maximum(ref, PSI_FLOOR)
    assert stats["sex"] == {"psi": pytest.approx(float(((p_w - p_r) * np.log(p_w / p_r)).sum()), abs=1e-12)}
    merged = FeatureWindowState.from_array((state + state).to_array())
    assert merged.filled == 300 and (merged.counts == 2 * state.counts).all()
    doubled = monitor.stats_of(merged)  # proportions unchanged by doubling
    for name, values in stats.items():
        assert doubled[name] == pytest.approx(values, abs=1e-12)


def test_ties_are_not_drift() -> None:
    """A feature whose training values tie (an imputed median, a count) is not called drifted when the
    window holds the training distribution itself: the reference is the training CDF, not j / (n - 1)."""
    rows = _toy_rows()
    rng = np.random.default_rng(0)
    for r in rows:  # a third missing (imputed with the median: one tied value), the rest small counts
        r["heart_rate"] = None if rng.random() < 1 / 3 else float(rng.integers(60, 66))
    pre, z = _pre_and_z([{k: v for k, v in r.items() if v is not None} for r in rows])
    refs = fit_feature_reference(pre, z)
    assert refs[1].cdf is not None and max(np.diff(refs[1].cdf)) > 0.3  # the tie: one big jump
    monitor = FeatureDriftMonitor(FeatureBinner.tabular(pre, refs), window=len(z))
    monitor.add(z)
    stats = monitor.stats_of(monitor.state())
    assert stats["heart_rate"]["psi"] < 1e-9 and stats["heart_rate"]["ks"] < 1e-9


def test_reference_travels_in_the_trained_checkpoint(toy_checkpoint: Path) -> None:
    from model_core.checkpoint import read_manifest

    features = read_manifest(toy_checkpoint).drift_reference.features
    assert features is not None and [f.name for f in features] == ["age", "heart_rate", "creatinine", "sex"]
    assert all(isinstance(f, FeatureDistribution) for f in features)


async def _feature_gauges(client: Any, rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    for i in range(0, len(rows), 50):
        r = await client.post(PREDICT, json={"instances": rows[i : i + 50], "parameters": {"samples": 4}})
        assert r.status_code == 200, r.text
    text = (await client.get("/metrics")).text
    out = {}
    for feature in ("age", "heart_rate", "creatinine", "sex"):
        for stat in ("psi", "ks"):
            value = metric_value(text, "lrbnn_feature_drift", model="toy", feature=feature, statistic=stat)
            if value is not None:
                out[(feature, stat)] = value
    return out


@pytest.mark.anyio
async def test_a_unit_error_moves_exactly_the_gauge_of_its_feature(serve_app: ServeApp) -> None:
    rows = _toy_rows(n=300, seed=7)  # fresh patients of the training distribution
    per_hour = [dict(r, heart_rate=r["heart_rate"] * 60) for r in rows]  # beats per hour, not per minute
    async with serve_app(drift_window=300) as client:
        assert served_model(client).manifest.drift_reference.features is not None
        before = await _feature_gauges(client, rows)
    async with serve_app(drift_window=300) as client:
        after = await _feature_gauges(client, per_hour)
    assert set(before) == {(f, s) for f in ("age", "heart_rate", "creatinine") for s in ("psi", "ks")} | {
        ("sex", "psi")
    }
    assert before[("heart_rate", "psi")] < 0.25 and after[("heart_rate", "psi")] > 5
    assert after[("heart_rate", "ks")] > 0.9
    for key, value in before.items():  # every other feature's window holds the very same values
        if key[0] != "heart_rate":
            assert after[key] == value, key


@pytest.mark.anyio
async def test_a_reload_to_a_version_without_a_reference_leaves_no_stale_gauge(
    serve_app: ServeApp, repo: Path
) -> None:
    import json

    from service_helpers import copy_version

    async with serve_app(admin_token="root") as client:
        before = await _feature_gauges(client, _toy_rows(n=60, seed=3))
        assert before and all(v == v for v in before.values())  # measured: finite
        v2 = copy_version(repo, "1", "2")
        manifest = json.loads((v2 / "manifest.json").read_text())
        del manifest["drift_reference"]["features"]  # a checkpoint from before references existed
        (v2 / "manifest.json").write_text(json.dumps(manifest))
        r = await client.post("/v1/models/toy/reload", headers={"authorization": "Bearer root"})
        assert r.status_code == 200, r.text
        after = await _feature_gauges(client, _toy_rows(n=10, seed=4))
    assert set(after) == set(before) and all(v != v for v in after.values())  # NaN: no data, not stale
