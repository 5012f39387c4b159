"""The fast path (``service/fastpath.py``) answers the model routes exactly like the normal stack.

Each test runs the same requests against two apps over the same checkpoint: one as ``create_app`` builds
it, one whose ``HotRoutes`` takes no route (every request through FastAPI's router), and compares status
codes, raw headers and body bytes, the access-log records and the Prometheus counters.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import toy
from service_helpers import ServeApp, metric_value, redact_ids

from service import fastpath
from service.errors import QueueFull
from service.logs import JsonFormatter

pytestmark = pytest.mark.anyio

PREDICT = "/v1/models/toy:predict"
INFER = "/v2/models/toy/infer"
ROW = [70.0, 110.0, 1.5, 1.0]
PARAMS = {"samples": 16, "seed": 3}
V1_BODY = orjson.dumps({"instances": [toy.instance()], "parameters": PARAMS})
V2_BODY = orjson.dumps(
    {
        "id": "r1",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": ROW}],
        "parameters": PARAMS,
    }
)
JSON = {"content-type": "application/json"}

Case = tuple[str, bytes, dict[str, str]]


def hot_routes(app: Any) -> fastpath.HotRoutes:
    layer = app.middleware_stack
    while not isinstance(layer, fastpath.HotRoutes):
        layer = layer.app
    return layer


@asynccontextmanager
async def fast_and_normal(
    serve_app: ServeApp, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two apps with the same settings: the fast path on, and off (HotRoutes finds no route)."""
    async with serve_app(**settings) as fast:
        await fast.get("/livez")  # builds the middleware stack
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fastpath, "hot_endpoints", lambda: ())
            async with serve_app(**settings) as normal:
                await normal.get("/livez")
                patch.undo()
                assert len(hot_routes(fast.app).routes) == 3  # type: ignore[attr-defined]
                assert hot_routes(normal.app).routes == []  # type: ignore[attr-defined]
                yield fast, normal


async def assert_same(fast: httpx.AsyncClient, normal: httpx.AsyncClient, cases: list[Case]) -> list[int]:
    statuses = []
    for i, (path, body, headers) in enumerate(cases):
        headers = {"x-request-id": f"case-{i}", **headers}
        a = await fast.post(path, content=body, headers=headers)
        b = await normal.post(path, content=body, headers=headers)
        assert (a.status_code, a.headers.raw, redact_ids(a.content)) == (
            b.status_code,
            b.headers.raw,
            redact_ids(b.content),
        ), path
        assert a.headers["x-request-id"] == f"case-{i}"
        statuses.append(a.status_code)
    return statuses


async def test_the_fast_path_takes_the_three_model_routes(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        await client.get("/livez")
        paths = {hot.route.path for hot in hot_routes(client.app).routes}  # type: ignore[attr-defined]
    assert paths == {
        "/v1/models/{name}:predict",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    }


async def test_answers_are_byte_identical(serve_app: ServeApp) -> None:
    cases: list[Case] = [
        (PREDICT, V1_BODY, JSON),
        (INFER, V2_BODY, {}),
        ("/v2/models/toy/versions/1/infer", V2_BODY, JSON),
        (INFER + "?version=1", V2_BODY, JSON),
        (INFER + "?version=7", V2_BODY, JSON),
        ("/v2/models/toy/versions/7/infer", V2_BODY, JSON),
        (PREDICT, b'{"instances": [', JSON),
        (INFER, b"\xff\xfe", {}),
        (PREDICT, orjson.dumps({"instances": [toy.instance(age="old")]}), JSON),
        ("/v1/models/nope:predict", V1_BODY, JSON),
        ("/v2/models/nope/infer", V2_BODY, {}),
        ("/v1/models/toy:predict/", V1_BODY, JSON),  # not a model route: the router redirects
    ]
    async with fast_and_normal(serve_app) as (fast, normal):
        hot = hot_routes(fast.app)  # type: ignore[attr-defined]
        direct = hot._handled.app
        taken: list[str] = []

        async def spy(scope: Any, receive: Any, send: Any) -> None:
            taken.append(scope["path"])
            await direct(scope, receive, send)

        hot._handled.app = spy
        statuses = await assert_same(fast, normal, cases)
        assert len(taken) == len(cases) - 1  # every model route went the direct way
        scrapes = [(await client.get("/metrics")).text for client in (fast, normal)]
    assert statuses == [200, 200, 200, 200, 404, 404, 400, 400, 422, 404, 404, 307]
    assert "nope" not in scrapes[0]  # an unknown model creates no series
    assert series(scrapes[0]) == series(scrapes[1])


def series(scrape: str) -> set[str]:
    return {line.split(" ")[0] for line in scrape.splitlines() if not line.startswith("#")}


async def test_tokens_401_403(serve_app: ServeApp) -> None:
    cases: list[Case] = [
        (PREDICT, V1_BODY, JSON),
        (PREDICT, V1_BODY, {**JSON, "authorization": "Bearer wrong"}),
        (PREDICT, V1_BODY, {**JSON, "authorization": "Basic abc"}),
        (INFER, V2_BODY, {"authorization": "Bearer t"}),
        (INFER, V2_BODY, {}),
    ]
    async with fast_and_normal(serve_app, api_tokens="t") as (fast, normal):
        assert await assert_same(fast, normal, cases) == [401, 403, 401, 200, 401]


async def test_body_limit_413(serve_app: ServeApp) -> None:
    big = orjson.dumps({"instances": [toy.instance()] * 100})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 256):
            yield big[i : i + 256]

    async with fast_and_normal(serve_app, max_body_bytes=2048) as (fast, normal):
        assert await assert_same(fast, normal, [(PREDICT, big, JSON), (INFER, big, {})]) == [413, 413]
        a = await fast.post(PREDICT, content=chunks(), headers={**JSON, "x-request-id": "c"})
        b = await normal.post(PREDICT, content=chunks(), headers={**JSON, "x-request-id": "c"})
        assert "content-length" not in a.request.headers
        assert (a.status_code, a.headers.raw, a.content) == (b.status_code, b.headers.raw, b.content)
        assert a.status_code == 413
        for client in (fast, normal):
            scrape = (await client.get("/metrics")).text
            assert metric_value(scrape, "lrbnn_requests_rejected_total", model="toy", reason="too_large") == 1


async def test_queue_full_429_with_retry_after(serve_app: ServeApp) -> None:
    async def full(*args: Any, **kwargs: Any) -> Any:
        raise QueueFull("the queue of model 'toy' is full", retry_after_s=1.5)

    async with fast_and_normal(serve_app) as (fast, normal):
        for client in (fast, normal):
            client.app.state.lrbnn.inference.predict = full  # type: ignore[attr-defined]
        assert await assert_same(fast, normal, [(PREDICT, V1_BODY, JSON), (INFER, V2_BODY, {})]) == [429, 429]
        r = await fast.post(INFER, content=V2_BODY)
        assert r.headers["retry-after"] == "2" and r.headers["content-type"] == "application/json"


async def test_unexpected_error_is_the_same_500(serve_app: ServeApp) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    async with fast_and_normal(serve_app) as (fast, normal):
        answers = []
        for client in (fast, normal):
            client.app.state.lrbnn.inference.predict = broken  # type: ignore[attr-defined]
            transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                r = await c.post(PREDICT, content=V1_BODY, headers={"x-request-id": "boom"})
            answers.append((r.status_code, r.headers.raw, r.content))
            with pytest.raises(RuntimeError, match="a bug"):
                await client.post(INFER, content=V2_BODY)
    assert answers[0] == answers[1]
    assert answers[0][0] == 500


async def test_cors_headers_on_the_model_routes(serve_app: ServeApp) -> None:
    origin = {"origin": "https://dash.example.org"}
    cases: list[Case] = [
        (PREDICT, V1_BODY, {**JSON, **origin}),
        (INFER, V2_BODY, {"origin": "https://evil.example.com"}),
        (INFER, b"{", origin),
    ]
    async with fast_and_normal(serve_app, cors_origins="https://dash.example.org") as (fast, normal):
        assert await assert_same(fast, normal, cases) == [200, 200, 400]
        r = await fast.post(PREDICT, content=V1_BODY, headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://dash.example.org"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    """The access-log records (the ``lrbnn`` loggers do not propagate to pytest's handler)."""
    logger = logging.getLogger("lrbnn.service.access")
    handler = _Records()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


async def test_access_log_and_metrics_are_the_same(
    serve_app: ServeApp, access_records: list[logging.LogRecord]
) -> None:
    planted = 987654.25
    secret = orjson.dumps({"instances": [toy.instance(age=planted)], "parameters": PARAMS})
    cases: list[Case] = [
        (PREDICT, V1_BODY, JSON),
        (PREDICT, secret, JSON),
        (INFER, V2_BODY, {}),
        (INFER, orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4]}]}), {}),
        ("/v1/models/nope:predict", V1_BODY, JSON),
    ]
    async with fast_and_normal(serve_app) as (fast, normal):
        access_records.clear()
        for i, (path, body, headers) in enumerate(cases):
            await fast.post(path, content=body, headers={**headers, "x-request-id": f"id-{i}"})
        fast_records = list(access_records)
        access_records.clear()
        for i, (path, body, headers) in enumerate(cases):
            await normal.post(path, content=body, headers={**headers, "x-request-id": f"id-{i}"})
        normal_records = list(access_records)
        for client in (fast, normal):  # the store counts what its writer thread has written: wait for it
            store = client.app.state.lrbnn.store  # type: ignore[attr-defined]
            assert store is not None and store.flush(10)
        scrapes = [(await client.get("/metrics")).text for client in (fast, normal)]
        r = await fast.post(PREDICT, content=V1_BODY, headers=JSON)  # a fresh request id
        assert len(r.headers["x-request-id"]) == 32

    fields = ("request_id", "method", "path", "status", "model", "instances")
    assert [tuple(getattr(rec, f) for f in fields) for rec in fast_records] == [
        tuple(getattr(rec, f) for f in fields) for rec in normal_records
    ]
    assert [rec.status for rec in fast_records] == [200, 200, 200, 400, 404]  # type: ignore[attr-defined]
    assert fast_records[0].instances == 1 and fast_records[0].model == "toy"  # type: ignore[attr-defined]
    lines = [JsonFormatter().format(rec) for rec in fast_records]
    assert all(set(orjson.loads(line)) == set(orjson.loads(lines[0])) for line in lines)
    assert {"request_id", "method", "path", "status", "model", "instances", "latency_ms"} <= set(
        orjson.loads(lines[0])
    )
    assert not [line for line in lines if "987654" in line]

    def counters(scrape: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape)
            for s in family.samples
            if s.name.endswith(("_count", "_total"))
        }

    assert counters(scrapes[0]) == counters(scrapes[1])
    count = "lrbnn_request_duration_seconds_count"
    assert metric_value(scrapes[0], count, model="toy", endpoint="v1_predict", code="200") == 2
    assert metric_value(scrapes[0], count, model="toy", endpoint="v2_infer", code="400") == 1
