"""The per-model request schemas of ``/openapi.json`` (``service/api/openapi.py``, ``request_schemas.py``).

What the document promises must be true: a body drawn from a model's published schema is answered
(drawn with schemathesis' positive generation, for the toy model through the app and for the three
bundled manifests, tabular, sequence window and text, through the very checks the handlers run), and
what the schema refuses (an unknown feature, a zero shape) the server refuses too.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import toy
from jsonschema import Draft202012Validator
from service_helpers import ServeApp, copy_version

from service.api.openapi import REF, base_document, build_document
from service.api.request_schemas import Limits

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "deploy" / "models"
PREDICT = "/v1/models/toy:predict"
INFER = "/v2/models/toy/infer"
DRAWS = 40


def _validator(doc: dict[str, Any], component: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": REF + component, "components": doc["components"]})


def _positive_bodies(doc: dict[str, Any], path: str, n: int = DRAWS) -> list[Any]:
    """``n`` request bodies drawn from the document's schema of ``POST path`` (schemathesis, positive)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    operation = schemathesis.openapi.from_dict(copy.deepcopy(doc))[path]["POST"]
    bodies: list[Any] = []

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def draw(case: Any) -> None:
        bodies.append(copy.deepcopy(case.body))

    draw()
    return bodies


def _with_shape_from_data(body: dict[str, Any]) -> dict[str, Any]:
    """What a client does, and the one relation JSON Schema cannot state: shape[0] = rows of data."""
    tensor = body["inputs"][0]
    tensor["shape"][0] = len(tensor["data"])
    return body


# -- the schema of the toy model, through the app --------------------------------------------------
@pytest.mark.anyio
async def test_a_model_gets_its_own_operations_and_request_schema(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    for path in (PREDICT, INFER, "/v2/models/toy/versions/1/infer"):
        assert "post" in paths[path], sorted(paths)
        assert not [p for p in paths[path]["post"].get("parameters", []) if p["in"] == "path"]
    # the generic templates of the body-carrying routes are gone; the other {name} routes stay
    assert "/v1/models/{name}:predict" not in paths and "/v2/models/{name}/infer" not in paths
    assert "/v2/models/{name}" in paths and "/v1/models/{name}/reload" in paths
    body = paths[PREDICT]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": REF + "toy.PredictRequest"}
    instance = doc["components"]["schemas"]["toy.Instance"]
    assert instance["additionalProperties"] is False and "required" not in instance  # all imputable
    assert set(instance["properties"]) == {*toy.NUMERIC, *toy.CATEGORICAL}
    # a categorical feature: its training categories as an enum (other values are answered and flagged)
    sex = instance["properties"]["sex"]
    assert sex["anyOf"][0]["enum"] == ["female", "male", None]
    assert "number" in instance["properties"]["age"]["type"]
    request = doc["components"]["schemas"]["toy.PredictRequest"]
    assert request["properties"]["instances"]["minItems"] == 1
    assert request["properties"]["instances"]["maxItems"] == 1024  # LRBNN_MAX_INSTANCES
    assert request["properties"]["parameters"]["properties"]["samples"]["maximum"] == 1024
    tensor = doc["components"]["schemas"]["toy.V2Input"]
    assert tensor["properties"]["name"]["enum"] == ["features", "input__0"]
    assert tensor["properties"]["datatype"]["enum"] == ["FP32", "FP64"]
    assert tensor["properties"]["shape"]["prefixItems"][0]["minimum"] == 1
    assert tensor["properties"]["shape"]["prefixItems"][1] == {"const": 4}


@pytest.mark.anyio
async def test_the_schema_and_the_server_agree_on_refusals(serve_app: ServeApp) -> None:
    async with serve_app(max_instances=8, max_samples=64) as client:
        doc = (await client.get("/openapi.json")).json()
        v1, v2 = _validator(doc, "toy.PredictRequest"), _validator(doc, "toy.V2InferRequest")
        good = {"instances": [toy.instance()], "parameters": {"samples": 64, "seed": 1}}
        bad = [
            {"instances": [toy.instance(bmi=22.0)]},  # unknown feature
            {"instances": []},
            {"instances": [{}] * 9},  # max_instances
            {"instances": [{}], "parameters": {"samples": 65}},  # max_samples
            {"instances": [{}], "parameters": {"seed": -1}},
            {"instances": [{"age": "70"}]},
            {"instances": [{}], "extra": 1},
        ]
        assert v1.is_valid(good) and (await client.post(PREDICT, json=good)).status_code == 200
        for body in bad:
            assert not v1.is_valid(body), body
            assert (await client.post(PREDICT, json=body)).status_code in (413, 422), body
        row = [70.0, 110.0, 1.5, 1]
        tensor = {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [row]}
        assert v2.is_valid({"inputs": [tensor]})
        assert (await client.post(INFER, json={"inputs": [tensor]})).status_code == 200
        for change in ({"shape": [0, 0]}, {"shape": [1, 3]}, {"datatype": "INT64"}, {"name": "x"}):
            body = {"inputs": [{**tensor, **change}]}
            assert not v2.is_valid(body), change
            assert (await client.post(INFER, json=body)).status_code in (400, 422), change
        wrong_category = {"inputs": [{**tensor, "data": [[70.0, 110.0, 1.5, 2]]}]}  # index 2 of 2 categories
        assert not v2.is_valid(wrong_category)
        assert (await client.post(INFER, json=wrong_category)).status_code == 422
        not_a_name = {"inputs": [tensor], "outputs": [{"name": {}}]}  # was a 500 (an unhashable name)
        assert not v2.is_valid(not_a_name)
        assert (await client.post(INFER, json=not_a_name)).status_code == 400
        # "finite" exactly: the largest double as an integer is a number, one more is refused (not rounded)
        largest = int(sys.float_info.max)
        for value, ok in ((largest, True), (largest + 1, False), (-largest - 1, False)):
            body = {"instances": [{"age": value}]}
            assert v1.is_valid(body) is ok, value
            assert (await client.post(PREDICT, json=body)).status_code == (200 if ok else 422), value
            big = {"inputs": [{**tensor, "data": [[value, 110.0, 1.5, 1]]}]}
            assert v2.is_valid(big) is ok, value
            assert (await client.post(INFER, json=big)).status_code == (200 if ok else 400), value


@pytest.mark.anyio
async def test_integers_may_be_spelled_as_whole_floats(serve_app: ServeApp) -> None:
    """JSON Schema's ``integer`` admits 2.0, so the server does too (and still refuses 2.5)."""
    async with serve_app() as client:
        r = await client.post(PREDICT, json={"instances": [{}], "parameters": {"samples": 8.0, "seed": 3.0}})
        assert r.status_code == 200 and r.json()["samples"] == 8, r.text
        assert (
            await client.post(PREDICT, json={"instances": [{}], "parameters": {"samples": 8.5}})
        ).status_code == 422
        tensor = {"name": "features", "datatype": "FP32", "shape": [1.0, 4.0], "data": [[70, 110, 1.5, 1.0]]}
        r = await client.post(INFER, json={"inputs": [tensor], "parameters": {"samples": 8.0}})
        assert r.status_code == 200 and r.json()["parameters"]["samples"] == 8, r.text
        tensor["shape"] = [1.5, 4]
        assert (await client.post(INFER, json={"inputs": [tensor]})).status_code == 400


@pytest.mark.anyio
async def test_every_request_drawn_from_the_toy_schema_is_answered(serve_app: ServeApp) -> None:
    async with serve_app(max_instances=16, max_samples=64) as client:
        doc = (await client.get("/openapi.json")).json()
        for body in _positive_bodies(doc, PREDICT):
            r = await client.post(PREDICT, json=body)
            assert r.status_code == 200, (body, r.text)
        for body in _positive_bodies(doc, INFER):
            r = await client.post(INFER, json=_with_shape_from_data(body))
            assert r.status_code == 200, (body, r.text)


@pytest.mark.anyio
async def test_the_document_follows_what_is_served(serve_app: ServeApp, repo: Path) -> None:
    from model_core.checkpoint import load_checkpoint, save_checkpoint

    async with serve_app(admin_token="root") as client:
        app = client.app  # type: ignore[attr-defined]
        first = (await client.get("/openapi.json")).json()
        assert app.openapi() is app.openapi()  # cached while nothing changes
        v2 = copy_version(repo, "1", "2")
        ckpt = load_checkpoint(v2)
        save_checkpoint(v2, ckpt.model, ckpt.manifest)
        r = await client.post("/v1/models/toy/reload", headers={"authorization": "Bearer root"})
        assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
        after = (await client.get("/openapi.json")).json()
    assert "/v2/models/toy/versions/1/infer" in first["paths"]
    assert "/v2/models/toy/versions/2/infer" in after["paths"]
    assert "/v2/models/toy/versions/1/infer" not in after["paths"]
    version = after["paths"][INFER]["post"]["parameters"][0]
    assert version["in"] == "query" and version["schema"]["enum"] == ["2"]


def test_the_document_is_valid_while_the_models_load(repo: Path) -> None:
    """Before the lifespan has loaded anything: no per-model operation yet, and a valid document."""
    import schemathesis

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_repository=repo))
    doc = app.openapi()
    assert not [p for p in doc["paths"] if p.endswith(":predict") or p.endswith("/infer")]
    assert "No model is served yet" in doc["info"]["description"]
    schemathesis.openapi.from_dict(copy.deepcopy(doc)).validate()


# -- the three bundled input kinds, through the handlers' own checks (no weights loaded) -----------
def _bundled(name: str) -> Any:
    from model_core.checkpoint import read_manifest
    from service.inputs import build_adapter

    directory = BUNDLED / name / "1"
    if not directory.is_dir():
        pytest.skip(f"no bundled model {name}")
    manifest = read_manifest(directory)
    inputs = build_adapter(manifest.input_schema)
    return SimpleNamespace(name=name, version="1", inputs=inputs, default_samples=32, manifest=manifest)


LIMITS = Limits(max_instances=6, max_samples=64, max_body_bytes=1 << 20)


def _accepted_v1(served: Any, payload: Any) -> None:
    """What ``api.v1.predict`` and ``InferenceService.predict`` check, in their order."""
    from service.api.body import validate
    from service.api.schemas import PredictRequest
    from service.inference import MAX_SEED

    body = validate(PredictRequest, payload)
    assert 1 <= len(body.instances) <= LIMITS.max_instances
    samples, seed = body.parameters.samples, body.parameters.seed
    assert samples is None or 1 <= samples <= LIMITS.max_samples
    assert seed is None or 0 <= seed <= MAX_SEED
    served.inputs.encode(body.instances)


def _accepted_v2(served: Any, payload: dict[str, Any]) -> None:
    """What ``api.v2.infer`` checks (a JSON body, no binary part), then the V1 path's checks."""
    from service.api import v2_codec

    x = v2_codec.decode_tensor(payload, b"", served.inputs.v2_input())
    assert 1 <= x.shape[0] <= LIMITS.max_instances
    params = payload.get("parameters") or {}
    assert isinstance(params, dict)
    served.inputs.encode_tensor(x)
    samples = v2_codec.int_param(params, "samples")
    assert samples is None or 1 <= samples <= LIMITS.max_samples
    v2_codec.int_param(params, "seed")
    v2_codec.requested_outputs(payload)
    assert payload.get("id") is None or isinstance(payload["id"], str)


@pytest.mark.parametrize("name", ["icu-mortality", "pm25-forecast", "review-sentiment"])
def test_every_request_drawn_from_a_bundled_schema_is_accepted(name: str, repo: Path) -> None:
    from service.app import create_app
    from service.settings import Settings

    served = _bundled(name)
    doc = build_document(base_document(create_app(Settings(model_repository=repo))), [served], LIMITS)
    kind = served.inputs.kind.value
    instance = doc["components"]["schemas"][f"{name}.Instance"]
    if kind == "sequence":
        hour = instance["properties"]["hours"]["items"]
        assert {"hour", "month"} <= set(hour["properties"]) and hour["additionalProperties"] is False
    if kind == "text":
        assert instance["properties"]["text"]["maxLength"] == 10_000
    for body in _positive_bodies(doc, f"/v1/models/{name}:predict", n=30):
        _accepted_v1(served, body)
    for body in _positive_bodies(doc, f"/v2/models/{name}/infer", n=30):
        _accepted_v2(served, _with_shape_from_data(body))
    assert cast(dict[str, Any], doc["paths"])[f"/v2/models/{name}/versions/1/infer"]
