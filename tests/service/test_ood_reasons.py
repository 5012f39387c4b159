"""One OOD decision with its reasons, the novelty score and the conformal outputs, through the app.

The toy checkpoint is trained with the real pipeline (``toy.train_toy``), so its manifest carries a
novelty detector and conformal calibration; expected values are recomputed here from that manifest and
the model_core functions, never recorded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import toy
from service_helpers import ServeApp

from model_core.conformal import prediction_sets

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/toy:predict"


def _manifest(repo: Path) -> dict:
    return json.loads((repo / "toy" / "1" / "manifest.json").read_text())


async def test_a_corner_inside_the_plausible_ranges_is_novel_not_implausible(
    serve_app: ServeApp, repo: Path
) -> None:
    """Every numeric value near its plausible maximum: no rule fires, the novelty detector must."""
    calib = _manifest(repo)["calibration"]
    async with serve_app() as client:
        (info,) = (await client.get("/v1/models")).json()["models"]
        features = info["features"]
        corner = {
            f["name"]: f["plausible_low"] + 0.97 * (f["plausible_high"] - f["plausible_low"])
            for f in features
            if f["kind"] == "numeric"
        }
        usual, far = (
            await client.post(
                PREDICT, json={"instances": [toy.instance(), corner], "parameters": {"seed": 1}}
            )
        ).json()["predictions"]
    assert far["flagged"] == [] and "implausible" not in far["ood_reasons"]
    assert far["novelty_score"] > calib["novelty"]["threshold"] > usual["novelty_score"]
    assert far["ood"] is True and "novelty" in far["ood_reasons"]
    assert usual["ood_reasons"] == [] and usual["ood"] is False


async def test_reasons_follow_the_calibrated_thresholds(serve_app: ServeApp, repo: Path) -> None:
    """Each reason fires exactly when its score exceeds the manifest's threshold (or a value is out of
    its plausible range), in the order epistemic, novelty, implausible; ``ood`` is their union."""
    calib = _manifest(repo)["calibration"]
    rng = np.random.default_rng(0)
    rows = [
        toy.instance(age=float(a), heart_rate=float(h), creatinine=float(c))
        for a, h, c in zip(
            rng.uniform(-50, 200, 60), rng.uniform(0, 300, 60), rng.uniform(0, 30, 60), strict=True
        )
    ]
    async with serve_app() as client:
        preds = (await client.post(PREDICT, json={"instances": rows, "parameters": {"seed": 2}})).json()[
            "predictions"
        ]
    seen = set()
    for p in preds:
        want = []
        if p["ood_score"] > calib["ood_threshold"]:
            want.append("epistemic")
        if p["novelty_score"] > calib["novelty"]["threshold"]:
            want.append("novelty")
        if any(name in ("age", "heart_rate", "creatinine") for name in p["flagged"]):
            want.append("implausible")
        assert p["ood_reasons"] == want and p["ood"] is bool(want)
        seen.update(want)
    assert {"novelty", "implausible"} <= seen  # the draw covers values far outside the training data


async def test_prediction_sets_are_the_conformal_sets_of_the_returned_mean(
    serve_app: ServeApp, repo: Path
) -> None:
    manifest = _manifest(repo)
    q = manifest["calibration"]["conformal"]["quantile"]
    labels = manifest["output_schema"]["labels"]
    rows = [toy.instance(age=float(a)) for a in np.linspace(20, 95, 16)]
    async with serve_app() as client:
        preds = (await client.post(PREDICT, json={"instances": rows, "parameters": {"seed": 3}})).json()[
            "predictions"
        ]
    members = prediction_sets(np.array([p["mean"] for p in preds]), q)
    assert [p["prediction_set"] for p in preds] == [
        [labels[k] for k in np.flatnonzero(row)] for row in members
    ]


async def test_v2_novelty_score_and_combined_ood_equal_v1(serve_app: ServeApp) -> None:
    rows = [toy.instance(), toy.instance(creatinine=1e4)]
    async with serve_app() as client:
        meta = (await client.get("/v2/models/toy")).json()
        names = meta["parameters"]["feature_names"]
        cats = meta["parameters"]["categories"]
        data = [[cats[n].index(r[n]) if n in cats else r[n] for n in names] for r in rows]
        body = {
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [2, len(names)], "data": data}],
            "parameters": {"seed": 4},
        }
        out = {o["name"]: o for o in (await client.post("/v2/models/toy/infer", json=body)).json()["outputs"]}
        v1 = (await client.post(PREDICT, json={"instances": rows, "parameters": {"seed": 4}})).json()
    assert out["novelty_score"]["datatype"] == "FP32"
    for i, p in enumerate(v1["predictions"]):
        assert out["novelty_score"]["data"][i] == pytest.approx(p["novelty_score"], rel=1e-5)
        assert out["ood"]["data"][i] == p["ood"]
    assert out["ood"]["data"][1] is True


async def test_metrics_count_each_ood_prediction_once_under_its_reasons(serve_app: ServeApp) -> None:
    rows = [toy.instance(), toy.instance(creatinine=1e4), toy.instance(age=500.0)]
    async with serve_app() as client:
        preds = (await client.post(PREDICT, json={"instances": rows, "parameters": {"seed": 5}})).json()[
            "predictions"
        ]
        text = (await client.get("/metrics")).text
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^lrbnn_ood_predictions_total\{model="toy",reason="([a-z+]+)"\} (\S+)$', text, re.M
        )
    }
    assert len(counts) == 7  # every combination of the three detectors, created at zero
    want: dict[str, int] = {}
    for p in preds:
        if p["ood"]:
            want["+".join(p["ood_reasons"])] = want.get("+".join(p["ood_reasons"]), 0) + 1
    assert {k: v for k, v in counts.items() if v} == want
    assert sum(counts.values()) == sum(p["ood"] for p in preds)  # sum by (model) = OOD predictions
    n = re.search(r'^lrbnn_novelty_score_count\{model="toy"\} (\S+)$', text, re.M)
    assert n is not None and float(n.group(1)) == 3.0
    rate = re.search(r'^lrbnn_ood_rate\{model="toy"\} (\S+)$', text, re.M)
    assert rate is not None and math.isclose(float(rate.group(1)), sum(p["ood"] for p in preds) / 3)


async def test_a_tampered_novelty_file_refuses_the_model(serve_app: ServeApp, repo: Path) -> None:
    path = repo / "toy" / "1" / "novelty.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    async with serve_app() as client:
        assert (await client.get("/readyz")).status_code == 503
        failed = (await client.get("/v1/models")).json()["failed"]
    assert "sha256" in failed["toy"] and "novelty" in failed["toy"]


async def test_a_checkpoint_without_novelty_or_conformal_still_serves(
    serve_app: ServeApp, repo: Path
) -> None:
    """Older manifests: no novelty score, no prediction set, the validation-scaled interval path."""
    manifest_path = repo / "toy" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["calibration"]["novelty"], manifest["calibration"]["conformal"]
    manifest_path.write_text(json.dumps(manifest))
    (repo / "toy" / "1" / "novelty.safetensors").unlink()
    async with serve_app() as client:
        (p,) = (await client.post(PREDICT, json={"instances": [toy.instance(creatinine=1e4)]})).json()[
            "predictions"
        ]
    assert p["novelty_score"] is None and "prediction_set" not in p
    assert p["ood"] is True and p["ood_reasons"] == [r for r in p["ood_reasons"] if r != "novelty"]
    assert "implausible" in p["ood_reasons"]


async def test_novelty_drift_gauge_follows_the_window(serve_app: ServeApp, repo: Path) -> None:
    """Inputs like the training data keep the novelty window near its reference; a stream of novel
    inputs moves the KS statistic towards 1 (every windowed score above the reference's quantiles)."""
    async with serve_app(drift_window=50) as client:
        (info,) = (await client.get("/v1/models")).json()["models"]
        corner = {
            f["name"]: f["plausible_low"] + 0.97 * (f["plausible_high"] - f["plausible_low"])
            for f in info["features"]
            if f["kind"] == "numeric"
        }
        await client.post(PREDICT, json={"instances": [corner] * 50, "parameters": {"seed": 6}})
        text = (await client.get("/metrics")).text
    stats = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^lrbnn_novelty_drift\{model="toy",statistic="([a-z]+)"\} (\S+)$', text, re.M)
    }
    assert set(stats) == {"psi", "ks", "wasserstein"}
    assert stats["ks"] > 0.9 and stats["psi"] > 1.0
