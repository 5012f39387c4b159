"""Fixtures for the reliability tests: the toy checkpoint of ``tests/service`` and apps over it.

``tests/service/conftest.py`` is not visible from this folder, so the few fixtures are restated here on
top of the same helpers (``toy.py``, ``service_helpers.py``); ``reliability_helpers.py`` adds a real
``lrbnn serve`` subprocess and log capture.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]
for _p in (str(_ROOT), str(_ROOT / "tests" / "service"), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import toy  # noqa: E402
from service_helpers import ServeApp  # noqa: E402


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy-ckpt-rel")
    return toy.train_toy(root / "ckpt", root / "work")


@pytest.fixture
def repo(tmp_path: Path, toy_checkpoint: Path) -> Path:
    return toy.make_repository(tmp_path / "models", toy_checkpoint)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def serve_app(repo: Path) -> ServeApp:
    """``async with serve_app(max_queue=2, ...) as client``: an in-process app over ``repo``."""
    from service.app import create_app
    from service.settings import Settings

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = Settings(**{"model_repository": repo, "max_batch_delay_ms": 2.0, **overrides})
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            loading = app.state.lrbnn.loading
            if loading is not None:
                await loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                client.app = app  # type: ignore[attr-defined]
                yield client

    return make
