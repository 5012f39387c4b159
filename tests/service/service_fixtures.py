"""The service tests' fixtures, shared with ``tests/reliability`` (imported by both conftests).

One trained toy checkpoint per session, and in-process apps over copies of it: ``serve_app`` runs the
app's lifespan (load + warm-up) and yields an httpx client over ASGITransport, so tests exercise the
real middleware stack without a socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import toy
from service_helpers import ServeApp


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy-ckpt")
    return toy.train_toy(root / "ckpt", root / "work")


@pytest.fixture
def repo(tmp_path: Path, toy_checkpoint: Path) -> Path:
    return toy.make_repository(tmp_path / "models", toy_checkpoint)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def serve_app(repo: Path) -> ServeApp:
    """``async with serve_app(max_queue=2, ...) as client``: an app over ``repo`` with those settings."""
    from service.settings import Settings

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        # admission by estimated wait off unless a test asks for it: many tests slow batches down on
        # purpose to force merging, which the 30 ms default budget would answer with 429s
        base = {"model_repository": repo, "max_batch_delay_ms": 2.0, "max_queue_wait_ms": 0.0}
        async with app_client(Settings(**{**base, **overrides})) as client:
            yield client

    return make


@asynccontextmanager
async def app_client(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process app with ``settings``, loaded, and an httpx client over it (``client.app``)."""
    from service.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        loading = app.state.lrbnn.loading
        if loading is not None:
            await loading  # what /readyz waits for; a load error would surface here
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def icu_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The real app over the bundled ICU model (FHIR-coded) and the text model, with its own store."""
    from fhir_helpers import icu_repository

    from service.app import create_app
    from service.settings import Settings

    repo = icu_repository(tmp_path / "models", with_sentiment=True)
    app = create_app(Settings(model_repository=repo, state_dir=tmp_path / "state", max_instances=1000))
    async with app.router.lifespan_context(app):
        assert app.state.lrbnn.loading is not None
        await app.state.lrbnn.loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            yield client
