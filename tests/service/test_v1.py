"""V1 predict, listing and input validation against the in-process app."""

from __future__ import annotations

import math

import orjson
import pytest
import toy
from service_helpers import ServeApp, metric_value, without_ids

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/toy:predict"


async def test_predict_answers_contract_fields(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        body = {"instances": [toy.instance(), {"age": 500.0}], "parameters": {"samples": 64, "seed": 3}}
        r = await client.post(PREDICT, json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert (data["model_name"], data["model_version"], data["samples"]) == ("toy", "1", 64)
        first, second = data["predictions"]
        for p in (first, second):
            assert set(p) == {
                "mean",
                "variance",
                "epistemic",
                "aleatoric",
                "ood_score",
                "novelty_score",
                "ood",
                "ood_reasons",
                "prediction_id",
                "prediction_set",
                "imputed",
                "flagged",
            }
            assert 0.0 <= p["mean"] <= 1.0 and p["variance"] >= 0 and p["epistemic"] >= 0
            assert math.isclose(p["epistemic"], p["ood_score"])
            assert isinstance(p["ood"], bool) and p["ood"] == bool(p["ood_reasons"])
            assert p["novelty_score"] >= 0 and set(p["prediction_set"]) <= {"0", "1"}
        assert first["imputed"] == [] and first["flagged"] == []
        assert second["imputed"] == ["heart_rate", "creatinine", "sex"]
        assert second["flagged"] == ["age"]
        # age 500 is outside its plausible range: OOD whatever the scores say, and the reason says why
        assert second["ood"] is True and "implausible" in second["ood_reasons"]
        assert r.headers["x-request-id"]


async def test_same_seed_same_answer_and_default_samples(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        body = {"instances": [toy.instance()], "parameters": {"seed": 11}}
        a, b = (await client.post(PREDICT, json=body)).json(), (await client.post(PREDICT, json=body)).json()
        assert without_ids(a) == without_ids(b)
        assert a["predictions"][0]["prediction_id"] != b["predictions"][0]["prediction_id"]
        assert a["samples"] == 32  # the toy manifest's calibration.default_samples


async def test_colon_route_is_not_confused_with_other_paths(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        assert (await client.post("/v1/models/toy:explain", json={})).status_code == 404
        assert (await client.post("/v1/models/toy", json={})).status_code in (404, 405)
        assert (await client.post(PREDICT, json={"instances": [toy.instance()]})).status_code == 200


async def test_list_models_exposes_schema(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        r = await client.get("/v1/models")
        assert r.status_code == 200
        (model,) = r.json()["models"]
        assert model["name"] == "toy" and model["version"] == "1" and model["versions"] == ["1"]
        features = {f["name"]: f for f in model["features"]}
        assert list(features) == ["age", "heart_rate", "creatinine", "sex"]
        assert features["sex"]["kind"] == "categorical" and features["sex"]["categories"] == [
            "female",
            "male",
        ]
        assert features["age"]["plausible_low"] < features["age"]["plausible_high"]


async def test_unknown_model_is_404_without_new_series(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        r = await client.post("/v1/models/ghost:predict", json={"instances": [toy.instance()]})
        assert r.status_code == 404 and r.json()["field"] == "name"
        assert (await client.post("/v2/models/ghost/infer", content=b"{}")).status_code == 404
        assert (await client.get("/v2/models/ghost")).status_code == 404
        scrape = (await client.get("/metrics")).text
        assert "ghost" not in scrape
        assert 'model="toy"' in scrape


BAD_INPUTS = [
    # (body bytes, status, field named in the answer)
    (b'{"instances": [{"age": NaN}]}', 422, "instances.0.age"),  # not JSON, but named precisely
    (orjson.dumps({"instances": [{"age": "70"}]}), 422, "instances.0.age"),
    (b'{"instances": [{"age": 1e999}]}', 422, "instances.0.age"),  # overflows to infinity
    (b'{"instances": [{"age": -Infinity}]}', 422, "instances.0.age"),
    (b'{"instances": [{"sex": NaN}]}', 422, "instances.0.sex"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "body"),  # nesting bomb
    (orjson.dumps({"instances": [{"weight": 70}]}), 422, "instances.0.weight"),
    (orjson.dumps({"instances": [{"sex": ["male"]}]}), 422, "instances.0.sex"),
    # in a request of several instances, the error names which one
    (orjson.dumps({"instances": [{"age": 70}, {"age": "70"}]}), 422, "instances.1.age"),
    (orjson.dumps({"instances": [{}, {}, {"weight": 70}]}), 422, "instances.2.weight"),
    (b'{"instances": [{"age": 70}, {"age": 70, "age": 71}]}', 422, "instances.1.age"),
    (b'{"instances": [{}, {"age": ' + b"9" * 400 + b"}]}", 422, "instances.1.age"),
    (orjson.dumps({"instances": []}), 422, "instances"),
    (orjson.dumps({"instances": ["x"]}), 422, "instances.0"),
    (orjson.dumps({}), 422, "instances"),
    (orjson.dumps({"instances": [{}], "parameters": {"samples": 0}}), 422, "parameters.samples"),
    (orjson.dumps({"instances": [{}], "parameters": {"samples": 10**6}}), 422, "parameters.samples"),
    (orjson.dumps({"instances": [{}], "parameters": {"samples": "8"}}), 422, "parameters.samples"),
    (orjson.dumps({"instances": [{}], "parameters": {"seed": -1}}), 422, "parameters.seed"),
    (orjson.dumps({"instances": [{}], "parameters": {"seed": 2**63}}), 422, "parameters.seed"),
    (orjson.dumps({"instances": [{}], "parameters": {"temperature": 2}}), 422, "parameters.temperature"),
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    (b'{"instances": [{"sex": "\xff\xfe"}]}', 400, "body"),  # invalid UTF-8
    (b"[1, 2]", 400, "body"),
]


@pytest.mark.parametrize(("raw", "status", "field"), BAD_INPUTS)
async def test_bad_input_is_a_precise_4xx(serve_app: ServeApp, raw: bytes, status: int, field: str) -> None:
    async with serve_app() as client:
        r = await client.post(PREDICT, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert r.json()["field"] == field, r.json()


async def test_infinite_value_named(serve_app: ServeApp) -> None:
    """orjson refuses Infinity literals; a huge finite value is accepted and flagged as implausible."""
    async with serve_app() as client:
        r = await client.post(PREDICT, json={"instances": [toy.instance(age=1e300)]})
        assert r.status_code == 200
        assert r.json()["predictions"][0]["flagged"] == ["age"]


async def test_unknown_category_is_flagged(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        r = await client.post(
            PREDICT, json={"instances": [toy.instance(sex="robot"), toy.instance(sex="male")]}
        )
        assert r.status_code == 200
        assert [p["flagged"] for p in r.json()["predictions"]] == [["sex"], []]


async def test_too_many_instances_is_413(serve_app: ServeApp) -> None:
    async with serve_app(max_instances=4) as client:
        r = await client.post(PREDICT, json={"instances": [toy.instance()] * 5})
        assert r.status_code == 413 and r.json()["field"] == "instances"
        scrape = (await client.get("/metrics")).text
        assert metric_value(scrape, "lrbnn_requests_rejected_total", model="toy", reason="too_large") == 1.0


async def test_openapi_documents_request_and_response(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        doc = (await client.get("/openapi.json")).json()
        op = doc["paths"]["/v1/models/toy:predict"]["post"]  # one operation per served model
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "toy.PredictRequest"
        )
        assert "toy.Instance" in doc["components"]["schemas"]
        assert "PredictRequest" in doc["components"]["schemas"]
        assert "PredictParameters" in doc["components"]["schemas"]
        assert "PredictResponse" in doc["components"]["schemas"]
