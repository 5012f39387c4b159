"""Bearer tokens (predict and admin), body-size limit and CORS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import toy
from service_helpers import ServeApp, metric_value

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/toy:predict"
BODY = {"instances": [toy.instance()]}


async def test_tokens_401_403_200(serve_app: ServeApp) -> None:
    async with serve_app(api_tokens="alpha, beta") as client:
        r = await client.post(PREDICT, json=BODY)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert (
            await client.post(PREDICT, json=BODY, headers={"authorization": "Basic abc"})
        ).status_code == 401
        assert (await client.post(PREDICT, json=BODY, headers={"authorization": "Bearer"})).status_code == 401
        assert (
            await client.post(PREDICT, json=BODY, headers={"authorization": "Bearer gamma"})
        ).status_code == 403
        assert (
            await client.post(PREDICT, json=BODY, headers={"authorization": "Bearer beta"})
        ).status_code == 200
        infer = {
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [70, 90, 1, 0]}]
        }
        assert (await client.post("/v2/models/toy/infer", json=infer)).status_code == 401
        # probes and metrics stay open for the orchestrator and Prometheus
        assert (await client.get("/readyz")).status_code == 200
        scrape = (await client.get("/metrics")).text
        assert (
            metric_value(scrape, "lrbnn_requests_rejected_total", model="toy", reason="unauthorized") == 4.0
        )
        assert metric_value(scrape, "lrbnn_requests_rejected_total", model="toy", reason="forbidden") == 1.0
        # an unknown model answers 401 too (no existence oracle) and creates no series
        assert (await client.post("/v1/models/ghost:predict", json=BODY)).status_code == 401
        assert "ghost" not in (await client.get("/metrics")).text


async def test_token_file(serve_app: ServeApp, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotated 2026-11\nfile-token\n\n")
    async with serve_app(api_tokens_file=path) as client:
        ok = await client.post(PREDICT, json=BODY, headers={"authorization": "Bearer file-token"})
        assert ok.status_code == 200


async def test_reload_needs_the_admin_token(serve_app: ServeApp) -> None:
    async with serve_app(api_tokens="user") as client:
        assert (await client.post("/v1/models/toy/reload")).status_code == 403  # no admin token configured
    async with serve_app(api_tokens="user", admin_token="root") as client:
        assert (await client.post("/v1/models/toy/reload")).status_code == 401
        r = await client.post("/v1/models/toy/reload", headers={"authorization": "Bearer user"})
        assert r.status_code == 403
        r = await client.post("/v1/models/toy/reload", headers={"authorization": "Bearer root"})
        assert r.status_code == 200, r.text


async def test_body_limit_by_content_length(serve_app: ServeApp) -> None:
    async with serve_app(max_body_bytes=2048) as client:
        r = await client.post(PREDICT, json={"instances": [toy.instance()] * 100})
        assert r.status_code == 413 and r.json()["field"] == "body"


async def test_body_limit_for_chunked_uploads(serve_app: ServeApp) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"instances": ['
        for _ in range(200):
            yield b'{"age": 70.0, "heart_rate": 90.0},'
        yield b"{}]}"

    async with serve_app(max_body_bytes=2048) as client:
        r = await client.post(PREDICT, content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        scrape = (await client.get("/metrics")).text
        assert metric_value(scrape, "lrbnn_requests_rejected_total", model="toy", reason="too_large") == 1.0


async def test_cors_allow_list(serve_app: ServeApp) -> None:
    async with serve_app(cors_origins="https://dash.example.org") as client:
        pre = {"origin": "https://dash.example.org", "access-control-request-method": "POST"}
        r = await client.options(PREDICT, headers=pre)
        assert r.headers.get("access-control-allow-origin") == "https://dash.example.org"
        r = await client.options(PREDICT, headers={**pre, "origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in r.headers
