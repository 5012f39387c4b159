"""Bearer tokens (predict and admin) and the request body limit.

Tokens are compared with ``hmac.compare_digest`` against every configured token (no early exit), so
timing says nothing about how close a guess was. The body limit is a pure ASGI middleware that counts
the bytes actually received, so a chunked upload without ``Content-Length`` is cut off as well.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from service.errors import Forbidden, PayloadTooLarge, Unauthorized

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

AUTH = "Authorization"


class TokenSet:
    """A set of accepted bearer tokens; empty means authentication is off."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, authorization: str | None, what: str = "this endpoint") -> None:
        """Raise 401 for an absent or malformed ``Authorization`` header, 403 for an unknown token."""
        if not authorization:
            raise Unauthorized(f"{what} needs an 'Authorization: Bearer <token>' header", field=AUTH)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'", field=AUTH)
        given = token.encode()
        ok = False
        for known in self._tokens:
            ok |= hmac.compare_digest(given, known)
        if not ok:
            raise Forbidden(f"the token is not valid for {what}", field=AUTH)


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by ``Content-Length`` up front, else by counting chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge:
            if started:
                raise
            await self._reject(send)

    def _reject(self, send: Send) -> Awaitable[None]:
        message = f"request body exceeds {self.max_bytes} bytes"
        return _send_json(send, 413, {"error": message, "field": "body"})


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
