"""Readiness during a slow start and while draining."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import httpx
import pytest
import toy

from service.app import create_app
from service.repository import ModelRepository
from service.settings import Settings

pytestmark = pytest.mark.anyio


async def test_readyz_is_503_while_loading_then_200(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    original = ModelRepository.load_all

    def slow_load(self: ModelRepository) -> None:
        gate.wait(10)
        original(self)

    monkeypatch.setattr(ModelRepository, "load_all", slow_load)
    app = create_app(Settings(model_repository=repo))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/livez")).status_code == 200
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            assert (await client.get("/v2/health/ready")).status_code == 503
            # a model the repository will hold once loaded: 503 "loading" with Retry-After, not 404
            r = await client.post("/v1/models/toy:predict", json={"instances": [toy.instance()]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert (await client.get("/v2/models/toy/ready")).status_code == 503
            gate.set()
            await app.state.lrbnn.loading
            assert (await client.get("/readyz")).status_code == 200
            body = {"instances": [toy.instance()]}
            assert (await client.post("/v1/models/toy:predict", json=body)).status_code == 200
            app.state.lrbnn.draining = True
            assert (await client.get("/readyz")).json()["status"] == "draining"
            r = await client.post("/v1/models/toy:predict", json=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"


async def test_empty_repository_is_never_ready(tmp_path: Path) -> None:
    app = create_app(Settings(model_repository=tmp_path / "nothing-here"))
    async with app.router.lifespan_context(app):
        await app.state.lrbnn.loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/livez")).status_code == 200
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/v1/models")).json() == {"models": [], "failed": {}}


async def test_a_loaded_model_not_yet_attached_is_503_not_ready_never_500(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading runs in a thread and each model is attached to the inference path on the loop only after
    all are loaded: in between, the repository already holds the model. A client polling the V2 model
    readiness must not see it ready, and a request must get 503 + Retry-After (once it got a 500)."""
    gate, loaded = threading.Event(), threading.Event()
    original = ModelRepository.load_all

    def load_then_hold(self: ModelRepository) -> None:
        original(self)  # the repository holds the model now
        loaded.set()
        gate.wait(10)  # ... while the loop has not attached it yet

    monkeypatch.setattr(ModelRepository, "load_all", load_then_hold)
    app = create_app(Settings(model_repository=repo))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert await anyio.to_thread.run_sync(loaded.wait, 10)
            r = await client.get("/v2/models/toy/ready")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            body = {"instances": [toy.instance()]}
            for path, payload in (
                ("/v1/models/toy:predict", body),
                (
                    "/v2/models/toy/infer",
                    {"inputs": [{"name": "age", "datatype": "FP32", "shape": [1], "data": [60.0]}]},
                ),
            ):
                r = await client.post(path, json=payload)
                assert r.status_code == 503 and r.headers["retry-after"] == "1", (path, r.text)
                assert "still loading" in r.text
            gate.set()
            await app.state.lrbnn.loading
            assert (await client.get("/v2/models/toy/ready")).status_code == 200
            assert (await client.post("/v1/models/toy:predict", json=body)).status_code == 200
