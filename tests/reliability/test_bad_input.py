"""Bad input by hand, beyond ``tests/service/test_v1.py`` (which covers NaN/Infinity literals, strings for
numbers, unknown features, empty instances, samples 0 / above the cap / as a string, seeds out of range,
a nesting bomb, invalid UTF-8): each case here must get a precise 4xx naming the field, and the service
must stay healthy afterwards (``/readyz`` 200 and a good prediction), with no 5xx on the books.
"""

from __future__ import annotations

import json

import orjson
import pytest
import toy
from service_helpers import ServeApp, metric_value

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/toy:predict"
INFER = "/v2/models/toy/infer"
GOOD = {"instances": [toy.instance()], "parameters": {"seed": 3}}
HUGE_INT = b"9" * 400  # valid JSON, beyond the float range


def _tensor(data: object, shape: object = (1, 4), **extra: object) -> bytes:
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(shape), "data": data}], **extra}  # type: ignore[call-overload]
    return json.dumps(body).encode()


def _params(**parameters: object) -> bytes:
    return orjson.dumps({"instances": [toy.instance()], "parameters": parameters})


# (path, body bytes, status, field named in the answer)
CASES: list[tuple[str, bytes, int, str]] = [
    # duplicate keys: which value would be used is ambiguous, so neither is
    (PREDICT, b'{"instances": [{"age": 70, "age": 700}]}', 422, "instances.0.age"),
    (PREDICT, b'{"instances": [{"age": 70}], "instances": [{"age": 71}]}', 422, "instances"),
    (PREDICT, b'{"instances": [{}], "parameters": {"seed": 1, "seed": 2}}', 422, "parameters.seed"),
    # numbers JSON allows but floats cannot hold
    (PREDICT, b'{"instances": [{"age": ' + HUGE_INT + b"}]}", 422, "instances.0.age"),
    (PREDICT, b'{"instances": [{"age": -' + HUGE_INT + b"}]}", 422, "instances.0.age"),
    (PREDICT, b'{"instances": [{"age": 1e999}]}', 422, "instances.0.age"),
    (PREDICT, b'{"instances": [{"heart_rate": NaN}]}', 422, "instances.0.heart_rate"),
    # wrong types
    (PREDICT, orjson.dumps({"instances": [{"creatinine": "1.5"}]}), 422, "instances.0.creatinine"),
    (PREDICT, orjson.dumps({"instances": [{"age": [70]}]}), 422, "instances.0.age"),
    (PREDICT, orjson.dumps({"instances": [{"age": {"value": 70}}]}), 422, "instances.0.age"),
    (PREDICT, orjson.dumps({"instances": {"age": 70}}), 422, "instances"),
    (PREDICT, orjson.dumps({"instances": [None]}), 422, "instances.0"),
    (PREDICT, orjson.dumps({"instances": None}), 422, "instances"),
    (PREDICT, orjson.dumps({"instances": [{"bmi": 22}]}), 422, "instances.0.bmi"),
    (PREDICT, orjson.dumps({"instances": [{}], "extra": 1}), 422, "extra"),
    # parameters
    (PREDICT, _params(samples=-1), 422, "parameters.samples"),
    (PREDICT, _params(samples=1025), 422, "parameters.samples"),
    (PREDICT, _params(samples=2.5), 422, "parameters.samples"),
    (PREDICT, _params(samples=True), 422, "parameters.samples"),
    (PREDICT, _params(seed=-(2**63)), 422, "parameters.seed"),
    (PREDICT, b'{"instances": [{}], "parameters": {"seed": ' + HUGE_INT + b"}}", 422, "parameters.seed"),
    (PREDICT, _params(seed=1.5), 422, "parameters.seed"),
    (PREDICT, _params(seed="7"), 422, "parameters.seed"),
    (PREDICT, _params(seed=False), 422, "parameters.seed"),
    (PREDICT, orjson.dumps({"instances": [{}], "parameters": [1]}), 422, "parameters"),
    # encodings and structure
    (PREDICT, b'{"instances": [{"sex": "\\ud800"}]}', 400, "body"),  # a lone surrogate
    (PREDICT, b'{"instances": [{"s\xc3\x28x": 1}]}', 400, "body"),  # invalid UTF-8 in a key
    (PREDICT, b'\xef\xbb\xbf{"instances": [{}]}', 400, "body"),  # a UTF-8 byte order mark
    (PREDICT, b'{"instances": [{"age": ' + b"[" * 50_000 + b"]" * 50_000 + b"}]}", 400, "body"),
    (PREDICT, b'{"instances": [{}]} {"instances": [{}]}', 400, "body"),  # two documents
    (PREDICT, b'{"instances": [{}]', 400, "body"),  # truncated
    (PREDICT, b"null", 400, "body"),
    # V2 tensors
    (INFER, _tensor([70, 110, 1.5, 0], shape=(True, 4)), 400, "inputs.0.shape"),
    (INFER, _tensor([70, 110, 1.5, 0], shape=(1, 4, 1)), 400, "inputs.0.shape"),
    (INFER, _tensor([70, 110, 1.5]), 400, "inputs.0.data"),
    (INFER, _tensor([70, "110", 1.5, 0]), 400, "inputs.0.data"),
    (INFER, _tensor([70, 110, 1.5, 7]), 422, "inputs.0.data.0.sex"),
    (INFER, _tensor([70, 110, 1.5, 0]).replace(b"70", HUGE_INT), 400, "inputs.0.data"),
    (INFER, _tensor([70, 110, 1.5, 0]).replace(b"70", b"Infinity"), 422, "inputs.0.data.0.age"),
    (
        INFER,
        _tensor([70, 110, 1.5, 0], outputs=[{"name": "mean", "parameters": [1]}]),
        400,
        "outputs.0.parameters",
    ),
    (INFER, _tensor([70, 110, 1.5, 0], outputs=[{"name": "logits"}]), 400, "outputs.0.name"),
    (INFER, _tensor([70, 110, 1.5, 0], id=5), 400, "id"),
    (INFER, _tensor([70, 110, 1.5, 0], parameters={"samples": 0}), 422, "parameters.samples"),
    (INFER, _tensor([70, 110, 1.5, 0], parameters={"seed": -1}), 422, "parameters.seed"),
    (INFER, _tensor([], shape=(0, 4)), 422, "instances"),
]


async def _healthy(client: object) -> None:
    r = await client.get("/readyz")  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    r = await client.post(PREDICT, json=GOOD)  # type: ignore[attr-defined]
    assert r.status_code == 200 and r.json()["predictions"][0]["flagged"] == [], r.text


async def test_each_bad_input_is_a_precise_4xx_and_the_service_stays_healthy(serve_app: ServeApp) -> None:
    wrong: list[str] = []
    async with serve_app() as client:
        for path, raw, status, field in CASES:
            r = await client.post(path, content=raw, headers={"content-type": "application/json"})
            answer = r.json() if r.headers.get("content-type") == "application/json" else {}
            if r.status_code != status or answer.get("field") != field:
                wrong.append(f"{raw[:80]!r}: want {status} {field}, got {r.status_code} {r.text[:200]}")
            await _healthy(client)
        scrape = (await client.get("/metrics")).text
    assert not wrong, "\n".join(wrong)
    for endpoint in ("v1_predict", "v2_infer"):
        for code in ("500", "503", "504"):
            count = metric_value(scrape, "lrbnn_request_duration_seconds_count", endpoint=endpoint, code=code)
            assert count is None, (endpoint, code, count)


async def test_implausible_values_are_flagged_not_silently_used(serve_app: ServeApp) -> None:
    """Wrong units (an age of 250 years, a heart rate in Hz, creatinine in µmol/L) are answered, but
    flagged per instance so that the caller sees the prediction rests on a suspicious value."""
    async with serve_app() as client:
        info = (await client.get("/v1/models")).json()["models"][0]["features"]
        high = {f["name"]: f["plausible_high"] for f in info if f["kind"] == "numeric"}
        low = {f["name"]: f["plausible_low"] for f in info if f["kind"] == "numeric"}
        rows = [
            toy.instance(age=250),
            toy.instance(heart_rate=1.6),  # beats per second
            toy.instance(creatinine=133.0),  # µmol/L instead of mg/dL
            toy.instance(age=low["age"] - 1, heart_rate=high["heart_rate"] + 1),
            toy.instance(),
        ]
        r = await client.post(PREDICT, json={"instances": rows, "parameters": {"seed": 1}})
        assert r.status_code == 200, r.text
        flagged = [p["flagged"] for p in r.json()["predictions"]]
        assert flagged == [["age"], ["heart_rate"], ["creatinine"], ["age", "heart_rate"], []]


async def test_too_many_instances_and_huge_bodies_are_413(serve_app: ServeApp) -> None:
    hundred_k = orjson.dumps({"instances": [{"age": 70}] * 100_000})  # ~1.3 MB
    async with serve_app() as client:
        r = await client.post(PREDICT, content=hundred_k)
        assert r.status_code == 413 and r.json()["field"] == "body", r.text
        r = await client.post(PREDICT, content=b'{"instances": [{"sex": "' + b"x" * 2_000_000 + b'"}]}')
        assert r.status_code == 413 and r.json()["field"] == "body"
        await _healthy(client)
    async with serve_app(max_body_bytes=4 << 20) as client:  # past the byte limit: the count limit
        r = await client.post(PREDICT, content=hundred_k)
        assert r.status_code == 413 and r.json()["field"] == "instances", r.text
        assert "100000" in r.json()["error"]
        await _healthy(client)


async def test_huge_text_is_refused_or_flagged_without_echoing_it(serve_app: ServeApp) -> None:
    """A long string where a category belongs is flagged (no model here takes free text); as an
    unknown feature name it is refused. Neither answer may echo the whole input back."""
    blob = "x" * 200_000
    async with serve_app() as client:
        r = await client.post(PREDICT, json={"instances": [toy.instance(sex=blob)]})
        assert r.status_code == 200 and r.json()["predictions"][0]["flagged"] == ["sex"]
        assert len(r.content) < 2_000
        huge_category = b'{"instances": [{"sex": ' + HUGE_INT + b"}]}"  # an unknown category: flagged
        r = await client.post(PREDICT, content=huge_category)
        assert r.status_code == 200 and r.json()["predictions"][0]["flagged"] == ["sex"]
        r = await client.post(PREDICT, json={"instances": [{blob: 1}]})
        assert r.status_code == 422 and r.json()["field"].startswith("instances.")
        await _healthy(client)
