"""Small request helpers shared by the routers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from starlette.requests import Request

from service.state import AppState


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.lrbnn
    return state


def disconnect_waiter(request: Request) -> Callable[[], Coroutine[Any, Any, object]]:
    """A coroutine factory that returns when the client disconnects (the body is already read)."""

    async def wait() -> object:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return message

    return wait
