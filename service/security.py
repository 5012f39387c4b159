"""Bearer tokens (predict and admin), the body limit's 413 answer, and the ASGI type aliases.

Tokens are compared with ``hmac.compare_digest`` against every configured token (no early exit), so
timing says nothing about how close a guess was. The body limit itself (by ``Content-Length``, else by
counting the bytes received) is enforced by ``service.fastpath.EdgeMiddleware``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from service.errors import Forbidden, Unauthorized

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


def reject_too_large(send: Send, max_bytes: int) -> Awaitable[None]:
    """The 413 answer of the body limit (``service.fastpath.EdgeMiddleware`` enforces it)."""
    return _send_json(send, 413, {"error": f"request body exceeds {max_bytes} bytes", "field": "body"})


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
