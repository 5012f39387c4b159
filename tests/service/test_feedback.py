"""Prediction ids, ``POST /v1/models/{name}/feedback`` and the realized / estimated performance gauges,
in process over a real SQLite store (the subprocess tests add restarts, SIGKILL and PostgreSQL)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import toy
from service_helpers import ServeApp, metric_value
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

pytestmark = pytest.mark.anyio
PREDICT, FEEDBACK = "/v1/models/toy:predict", "/v1/models/toy/feedback"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


async def _predict(client: httpx.AsyncClient, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    instances = [
        toy.instance(age=float(rng.uniform(20, 90)), heart_rate=float(rng.uniform(50, 140))) for _ in range(n)
    ]
    r = await client.post(PREDICT, json={"instances": instances, "parameters": {"samples": 16, "seed": seed}})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


async def _labels(client: httpx.AsyncClient) -> list[str]:
    return (await client.get("/v1/models")).json()["models"][0]["output"]["labels"]


async def test_every_prediction_gets_a_fresh_unguessable_id(serve_app: ServeApp, tmp_path: Path) -> None:
    async with serve_app(state_dir=tmp_path) as client:
        body = {"instances": [toy.instance(), toy.instance()], "parameters": {"seed": 1}}
        a = (await client.post(PREDICT, json=body)).json()["predictions"]
        b = (await client.post(PREDICT, json=body)).json()["predictions"]
        ids = [p["prediction_id"] for p in a + b]
        assert all(HEX32.match(i) for i in ids) and len(set(ids)) == 4  # same inputs, same seed: new ids
        v2 = await client.post(
            "/v2/models/toy/infer",
            json={
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [60, 80, 1, 0]}]
            },
        )
        out = {o["name"]: o for o in v2.json()["outputs"]}
        assert out["prediction_id"]["datatype"] == "BYTES" and HEX32.match(out["prediction_id"]["data"][0])


async def test_feedback_statuses_and_idempotence(serve_app: ServeApp, tmp_path: Path) -> None:
    async with serve_app(state_dir=tmp_path) as client:
        preds = await _predict(client, 4)
        labels = await _labels(client)
        ids = [p["prediction_id"] for p in preds]
        body = {
            "outcomes": [
                {"prediction_id": ids[0], "value": labels[1]},  # a label
                {"prediction_id": ids[1], "value": 0},  # a class index
                {"prediction_id": ids[2], "value": True},  # binary: true = the positive class
                {"prediction_id": ids[3], "value": "maybe"},  # not a label
                {"prediction_id": ids[0], "value": labels[0]},  # the same id again in one request
                {"prediction_id": "f" * 32, "value": 1},  # never predicted
            ]
        }
        r = await client.post(FEEDBACK, json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["accepted"] == ids[:3]
        assert got["duplicate"] == [ids[0]] and got["unknown"] == ["f" * 32]
        assert [i["prediction_id"] for i in got["invalid"]] == [ids[3]]
        assert "unknown label 'maybe'" in got["invalid"][0]["error"]
        again = (await client.post(FEEDBACK, json=body)).json()  # a retry changes nothing
        assert again["accepted"] == [] and again["duplicate"] == [ids[0], ids[1], ids[2], ids[0]]
        for value, why in ((2, "between 0 and 1"), (0.5, "label or a class index"), (-1, "between 0 and 1")):
            bad = (
                await client.post(FEEDBACK, json={"outcomes": [{"prediction_id": ids[3], "value": value}]})
            ).json()
            assert why in bad["invalid"][0]["error"]
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "lrbnn_outcomes_total", model="toy") == 3.0
        assert metric_value(metrics, "lrbnn_outcome_delay_seconds_count", model="toy") == 3.0
        assert metric_value(metrics, "lrbnn_store_predictions_total", model="toy", result="stored") == 4.0
        assert (
            metric_value(
                metrics,
                "lrbnn_request_duration_seconds_count",
                model="toy",
                endpoint="v1_feedback",
                code="200",
            )
            == 5.0
        )


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{", 400, "body"),
        (b"{}", 422, "outcomes"),
        (b'{"outcomes": []}', 422, "outcomes"),
        (b'{"outcomes": [{"value": 1}]}', 422, "outcomes.0.prediction_id"),
        (b'{"outcomes": [{"prediction_id": 7, "value": 1}]}', 422, "outcomes.0.prediction_id"),
        (b'{"outcomes": [{"prediction_id": "a"}]}', 422, "outcomes.0.value"),
        (b'{"outcomes": [{"prediction_id": "a", "value": 1, "extra": 2}]}', 422, "outcomes.0.extra"),
        (b'{"outcomes": [{"prediction_id": "a", "value": {"a": 1}}]}', 422, "outcomes.0.value"),
        (b'{"outcomes": [{"prediction_id": "a", "value": null}]}', 422, "outcomes.0.value"),
    ],
)
async def test_malformed_feedback_is_a_precise_4xx(
    serve_app: ServeApp, tmp_path: Path, body: bytes, status: int, field: str
) -> None:
    async with serve_app(state_dir=tmp_path) as client:
        r = await client.post(FEEDBACK, content=body)
        assert r.status_code == status, r.text
        assert r.json()["field"] == field


async def test_feedback_auth_unknown_model_and_size(serve_app: ServeApp, tmp_path: Path) -> None:
    async with serve_app(state_dir=tmp_path, api_tokens="secret", max_instances=2) as client:
        one = {"outcomes": [{"prediction_id": "a" * 32, "value": 1}]}
        assert (await client.post(FEEDBACK, json=one)).status_code == 401
        auth = {"authorization": "Bearer secret"}
        assert (
            await client.post(FEEDBACK, json=one, headers={"authorization": "Bearer no"})
        ).status_code == 403
        assert (await client.post("/v1/models/nope/feedback", json=one, headers=auth)).status_code == 404
        three = {"outcomes": one["outcomes"] * 3}
        r = await client.post(FEEDBACK, json=three, headers=auth)
        assert r.status_code == 413 and r.json()["field"] == "outcomes"
        assert (await client.post(FEEDBACK, json=one, headers=auth)).json()["unknown"] == ["a" * 32]


async def test_store_off_still_gives_ids_and_feedback_says_why(serve_app: ServeApp) -> None:
    async with serve_app(store_url="none") as client:
        preds = await _predict(client, 1)
        assert HEX32.match(preds[0]["prediction_id"])
        r = await client.post(
            FEEDBACK, json={"outcomes": [{"prediction_id": preds[0]["prediction_id"], "value": 1}]}
        )
        assert r.status_code == 503 and "LRBNN_STORE_URL=none" in r.json()["error"]


async def test_unreachable_store_never_fails_a_prediction(serve_app: ServeApp) -> None:
    async with serve_app(store_url="postgresql+psycopg://nobody@127.0.0.1:1/none", store_queue=3) as client:
        for _ in range(3):
            assert len(await _predict(client, 2)) == 2  # answered; 2 queued, then the queue is full
        r = await client.post(FEEDBACK, json={"outcomes": [{"prediction_id": "a" * 32, "value": 1}]})
        assert r.status_code == 503 and "not reachable" in r.json()["error"]
        assert r.headers["retry-after"] == "5"
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "lrbnn_store_predictions_total", model="toy", result="queue_full") == 4.0
        assert math.isnan(metric_value(metrics, "lrbnn_realized_performance", model="toy", metric="brier"))


def _ece(p_pos: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE over equal-width bins (lo, hi], written out independently of model_core."""
    conf = np.maximum(p_pos, 1 - p_pos)
    pred = (p_pos > 0.5).astype(int)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


def _expected_auroc(p: np.ndarray) -> float:
    """The CBPE AUROC as a double sum: P(score of a positive > score of a negative), each instance a
    positive with probability p and a negative with 1 - p (ties count one half)."""
    num = 0.0
    for i in range(p.size):
        for j in range(p.size):
            if p[i] > p[j]:
                num += p[i] * (1 - p[j])
            elif p[i] == p[j]:
                num += 0.5 * p[i] * (1 - p[j])
    return num / (p.sum() * (1 - p).sum())


async def test_realized_and_estimated_gauges_equal_direct_computations(
    serve_app: ServeApp, tmp_path: Path
) -> None:
    async with serve_app(state_dir=tmp_path, performance_window=30) as client:
        preds = await _predict(client, 30, seed=1) + await _predict(client, 30, seed=2)
        labels = await _labels(client)
        rng = np.random.default_rng(5)
        y = (rng.random(len(preds)) < 0.5).astype(int)
        outcomes = [
            {"prediction_id": p["prediction_id"], "value": int(v)} for p, v in zip(preds, y, strict=True)
        ]
        for chunk in (outcomes[:30], outcomes[30:]):  # arrival order: the window is the latest 30
            r = await client.post(FEEDBACK, json={"outcomes": chunk})
            assert len(r.json()["accepted"]) == len(chunk)
        metrics = (await client.get("/metrics")).text
        window = slice(30, 60)  # the 30 latest arrivals (the second request)
        p = np.array([q["mean"] for q in preds], dtype=np.float64)
        sets = [q["prediction_set"] for q in preds]

        def realized(metric: str) -> float:
            value = metric_value(metrics, "lrbnn_realized_performance", model="toy", metric=metric)
            assert value is not None
            return value

        pw, yw = p[window], y[window]
        # float32 outputs through JSON both ways: the same numbers, so agreement to 1e-9 (not 0: sums
        # in another order)
        assert realized("brier") == pytest.approx(brier_score_loss(yw, pw), abs=1e-9)
        assert realized("auroc") == pytest.approx(roc_auc_score(yw, pw), abs=1e-9)
        assert realized("accuracy") == pytest.approx(accuracy_score(yw, (pw > 0.5).astype(int)), abs=1e-9)
        assert realized("ece") == pytest.approx(_ece(pw, yw), abs=1e-9)
        coverage = np.mean([labels[k] in s for k, s in zip(yw, sets[window], strict=True)])
        assert realized("set_coverage") == pytest.approx(coverage, abs=1e-12)

        latest = p[30:]  # the 30 latest predictions (the second request), outcomes or not

        def est(metric: str) -> float:
            value = metric_value(metrics, "lrbnn_estimated_performance", model="toy", metric=metric)
            assert value is not None
            return value

        assert est("accuracy") == pytest.approx(np.mean(np.maximum(latest, 1 - latest)), abs=1e-9)
        assert est("brier") == pytest.approx(np.mean(latest * (1 - latest)), abs=1e-9)
        assert est("auroc") == pytest.approx(_expected_auroc(latest), abs=1e-9)
