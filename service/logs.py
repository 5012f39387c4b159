"""Structured JSON logs: one object per line; a request line carries id, model, instances, latency.

Feature values never reach a log line: handlers annotate the request with the model name and the
instance count only, and error messages that echo client input go to the client, not to the log.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import Any

import orjson

from service.security import ASGIApp, Message, Receive, Scope, Send

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
access_log = logging.getLogger("lrbnn.service.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("lrbnn")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", []):
        if key == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
            return str(value.decode().strip())
    return uuid.uuid4().hex


class AccessLogMiddleware:
    """Assigns a request id (kept from ``X-Request-ID`` when sane), echoes it, logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope.get("path") not in ("/metrics", "/livez", "/readyz"):
                access_log.info(
                    "request",
                    extra={
                        "request_id": rid,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "model": state.get("model"),
                        "instances": state.get("instances"),
                        "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
                    },
                )
