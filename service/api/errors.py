"""The one place that turns exceptions into answers: ``ServiceError`` subclasses carry their status.

Anything else (a bug, a runtime failure) is a logged 500 without details; a client input never gets
there because every input check raises a :class:`service.errors.ServiceError`.
"""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service.errors import QueueFull, ServiceError, Unauthorized
from service.reservations import HEADER as RETRY_HEADER

log = logging.getLogger("lrbnn.service.errors")


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, object] = {"error": message}
    if field is not None:
        body["field"] = field
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_headers(exc: ServiceError) -> dict[str, str]:
    """``Retry-After`` (whole seconds >= 1), a 429's ``Lrbnn-Retry-Token`` when a reservation was
    booked, and, for a 401, ``WWW-Authenticate``: every error body's."""
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, QueueFull) and exc.retry_token is not None:
        headers[RETRY_HEADER] = exc.retry_token
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="lrbnn"'
    return headers


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.message, exc.field, error_headers(exc))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
    return error_response(422, f"{field or 'request'}: {first.get('msg')}", field or None)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _client_disconnect(request: Request, exc: Exception) -> Response:
    """The client left while its body was read: nobody reads this answer, and it is no server error."""
    return error_response(499, "the client disconnected while sending the request", "body")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(500, "internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(Exception, _unexpected)
