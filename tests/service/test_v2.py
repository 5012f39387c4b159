"""Open Inference Protocol V2 REST against the in-process app (tritonclient runs in integration)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest
import toy
from service_helpers import ServeApp

pytestmark = pytest.mark.anyio
INFER = "/v2/models/toy/infer"
ROW = [70.0, 110.0, 1.5, 1.0]  # age, heart_rate, creatinine, sex = categories[1] = "male"


def _infer_body(data: Sequence[object], shape: list[int], **extra: object) -> dict[str, object]:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": shape, "data": data}], **extra}


async def test_server_and_model_metadata(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        assert (await client.get("/v2")).json()["name"] == "lrbnn"
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
        meta = (await client.get("/v2/models/toy")).json()
        assert meta["name"] == "toy" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
        types = {o["name"]: o["datatype"] for o in meta["outputs"]}
        assert types["mean"] == types["variance"] == types["epistemic"] == types["ood_score"] == "FP32"
        assert types["ood"] == "BOOL"
        assert meta["parameters"]["feature_names"] == ["age", "heart_rate", "creatinine", "sex"]
        assert (await client.get("/v2/models/toy/versions/1")).status_code == 200
        assert (await client.get("/v2/models/toy/versions/9")).status_code == 404
        assert (await client.get("/v2/models/toy/ready")).json()["ready"] is True


async def test_infer_without_content_type_matches_v1(serve_app: ServeApp) -> None:
    """tritonclient sends no Content-Type: the body is parsed from raw bytes anyway."""
    async with serve_app() as client:
        body = _infer_body([ROW, [None, 90.0, None, 0.0]], [2, 4], parameters={"samples": 48, "seed": 9})
        r = await client.post(INFER, content=orjson.dumps(body))
        assert "content-type" not in r.request.headers
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert set(out) == {
            "mean",
            "variance",
            "epistemic",
            "ood_score",
            "novelty_score",
            "ood",
            "prediction_id",
        }
        assert out["prediction_id"]["datatype"] == "BYTES" and len(set(out["prediction_id"]["data"])) == 2
        assert out["mean"]["shape"] == [2] and out["ood"]["datatype"] == "BOOL"
        v1 = await client.post(
            "/v1/models/toy:predict",
            json={
                "instances": [toy.instance(), {"heart_rate": 90.0, "sex": "female"}],
                "parameters": {"samples": 48, "seed": 9},
            },
        )
        preds = v1.json()["predictions"]
        for i, p in enumerate(preds):
            for key in ("mean", "variance", "epistemic", "ood_score"):
                assert out[key]["data"][i] == pytest.approx(p[key], rel=1e-6)
            assert out["ood"]["data"][i] == p["ood"]


async def test_binary_tensor_extension(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        x = np.array([ROW, ROW], dtype=np.float32)
        header = {
            "inputs": [
                {
                    "name": "input__0",
                    "datatype": "FP32",
                    "shape": [2, 4],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "mean", "parameters": {"binary_data": True}}, {"name": "ood"}],
            "parameters": {"seed": 1},
        }
        head = orjson.dumps(header)
        r = await client.post(
            INFER, content=head + x.tobytes(), headers={"Inference-Header-Content-Length": str(len(head))}
        )
        assert r.status_code == 200, r.text
        n = int(r.headers["inference-header-content-length"])
        meta = orjson.loads(r.content[:n])
        mean = np.frombuffer(r.content[n:], dtype=np.float32)
        assert meta["outputs"][0]["parameters"]["binary_data_size"] == 8 and mean.shape == (2,)
        assert ((mean > 0) & (mean < 1)).all()
        assert meta["outputs"][1]["datatype"] == "BOOL" and len(meta["outputs"][1]["data"]) == 2


BAD = [
    (_infer_body(ROW, [1, 3]), "inputs.0.shape"),
    (_infer_body(ROW, [4]), "inputs.0.shape"),
    (_infer_body(ROW, [2, 4]), "inputs.0.data"),
    (
        {"inputs": [{"name": "features", "datatype": "INT64", "shape": [1, 4], "data": ROW}]},
        "inputs.0.datatype",
    ),
    ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}, "inputs.0.name"),
    ({"inputs": []}, "inputs"),
    ({}, "inputs"),
    (_infer_body(["a", 1, 2, 3], [1, 4]), "inputs.0.data"),
    (_infer_body(ROW, [1, 4], outputs=[{"name": "logits"}]), "outputs.0.name"),
]


@pytest.mark.parametrize(("body", "field"), BAD)
async def test_bad_tensor_is_400_naming_the_problem(serve_app: ServeApp, body: object, field: str) -> None:
    async with serve_app() as client:
        r = await client.post(INFER, content=orjson.dumps(body))
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field


async def test_bad_values_are_422(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        r = await client.post(INFER, content=orjson.dumps(_infer_body([70, 90, 1, 7], [1, 4])))
        assert r.status_code == 422 and r.json()["field"] == "inputs.0.data.0.sex"
        two = _infer_body([70, 90, 1, 0, 71, 91, 1, 9], [2, 4])  # the second row's category is bad
        r = await client.post(INFER, content=orjson.dumps(two))
        assert r.status_code == 422 and r.json()["field"] == "inputs.0.data.1.sex"
        r = await client.post(
            INFER, content=orjson.dumps(_infer_body(ROW, [1, 4], parameters={"samples": 0}))
        )
        assert r.status_code == 422 and r.json()["field"] == "parameters.samples"
        r = await client.post(INFER, content=b"\xff\xfe")
        assert r.status_code == 400
        r = await client.post(
            "/v2/models/toy/versions/7/infer", content=orjson.dumps(_infer_body(ROW, [1, 4]))
        )
        assert r.status_code == 404
