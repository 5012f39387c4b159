"""The bare-ASGI baseline of ``serve_load.py``: what any Python HTTP service pays per request.

uvicorn (with the same loop and HTTP parser as ``lrbnn serve``: uvloop and httptools when importable)
and one ASGI handler that reads the body, parses it as JSON and answers a fixed body of the size of
a real answer, read from ``LRBNN_BARE_ANSWER`` (a file). No routing, validation, preprocessing,
model, metrics or logging: the service's request path costs what it costs *beyond* this. The model's
ready URL (``GET /v2/models/{model}/ready``) and every other GET answer 200, so the benchmark's
readiness wait works unchanged.

    LRBNN_BARE_ANSWER=answer.json python -m uvicorn bare_asgi:app --app-dir benchmarks --port 8000
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ANSWER = Path(os.environ["LRBNN_BARE_ANSWER"]).read_bytes() if "LRBNN_BARE_ANSWER" in os.environ else b"{}"
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "POST":
        json.loads(body)  # the same JSON parse every server does
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _ANSWER})
