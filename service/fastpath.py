"""The request edge in one pure-ASGI layer, and the model routes without the framework's per-request work.

Profiling one-instance model requests showed the event loop, not the model, as the bottleneck: most
of its CPU per request went to the framework (route matching over every route, FastAPI's request
handler with its dependency solving and two ``AsyncExitStack`` s, two exception-handling wrappers) and
to our two middlewares. ``create_app`` installs the two classes below instead:

* :class:`EdgeMiddleware` (outermost of ours): the request id (kept from ``X-Request-ID`` when sane,
  echoed on every answer), one access-log line per request, and the body limit (413, by
  ``Content-Length`` up front, else by counting the bytes received, so a chunked upload is cut off as
  well). Formerly two middlewares, now one layer.
* :class:`HotRoutes` (innermost of ours, inside CORS): ``POST /v1/models/{name}:predict``,
  ``POST /v2/models/{name}/infer`` and ``POST /v2/models/{name}/versions/{version}/infer`` go straight to
  their handlers (``service.api.v1.predict``, ``service.api.v2.infer``) under the app's exception
  handlers, exactly as the router would call them; every other request goes down the normal stack.

The handlers take only string path/query parameters and the ``Request`` (bodies are parsed by hand,
see ``api/body``), so the direct call answers the same bytes: a route whose signature needs more
(a dependency, a body parameter, a typed query parameter) is left to the router. With FastAPI's
OpenTelemetry instrumentation active the router handles every request, so spans stay complete.

Why a second dispatcher is kept (issue #18, item 1, measured 2026-12-07 with ``benchmarks/loop_cpu.py``,
event-loop CPU per V2 request, base vs variant alternated in one run on the 2-core VM): serving the
three routes inside FastAPI 0.165's router costs more than the 3 % allowed, because everything inside
the app's middleware stack (``ExceptionMiddleware``, the ``AsyncExitStack`` and body-limit layers, the
included-router matching) runs on every request. A custom ``route_class`` with a lean
``get_route_handler`` (FastAPI's documented extension point): 641 vs 529 us (+21 %; V1 549 vs 502,
+9 %). Plain Starlette ``Route`` s placed first in ``app.router.routes``: 620 vs 548 us (+13 %). This
layer sits outside that stack, under the same exception handlers, and is tested byte for byte against
the router (``tests/service/test_fastpath.py``).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.convertors import StringConvertor
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response

from service.api import v1, v2
from service.errors import PayloadTooLarge
from service.logs import log_request, request_id
from service.security import ASGIApp, Message, Receive, Scope, Send, reject_too_large

Handler = Callable[..., Coroutine[Any, Any, Response]]

#: answered, but not access-logged (probes and scrapes would drown the request lines)
UNLOGGED_PATHS = frozenset({"/metrics", "/livez", "/readyz"})


class EdgeMiddleware:
    """Request id, ``X-Request-ID`` echo, one access-log line, and the 413 body limit: one layer."""

    def __init__(self, app: ASGIApp, max_bytes: int, fhir_max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.fhir_max_bytes = max_bytes if fhir_max_bytes is None else fhir_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        status = 500
        started = False
        path = scope.get("path", "")
        max_bytes = self.fhir_max_bytes if is_fhir_path(path) else self.max_bytes

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
            return message

        try:
            if _declared_length(scope) > max_bytes:
                await reject_too_large(send_with_id, max_bytes)
                return
            try:
                await self.app(scope, counting_receive, send_with_id)
            except PayloadTooLarge:
                if started:
                    raise
                await reject_too_large(send_with_id, max_bytes)
        finally:
            if path not in UNLOGGED_PATHS:
                log_request(rid, scope.get("method"), path, status, state, t0)


def is_fhir_path(path: str) -> bool:
    """The FHIR predict and CDS Hooks routes (``LRBNN_FHIR_MAX_BODY_BYTES``)."""
    return path.endswith(":predict-fhir") or path.startswith("/cds-services")


def _declared_length(scope: Scope) -> int:
    """The largest ``Content-Length`` the request declares (0 when none, or not a number)."""
    declared = 0
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            with contextlib.suppress(ValueError):
                declared = max(declared, int(value))
    return declared


@dataclass(frozen=True)
class HotRoute:
    route: APIRoute
    endpoint: Handler
    regex: re.Pattern[str]
    #: parameters the router takes from the query string (``str | None``, default None)
    query: tuple[str, ...]


#: the handlers worth the direct call (every one-instance model request goes to one of them)
def hot_endpoints() -> tuple[Handler, ...]:
    return (v1.predict, v2.infer)


def hot_routes(routes: Iterable[Any], endpoints: Iterable[Handler]) -> list[HotRoute]:
    """The POST routes of ``endpoints`` that a direct call answers exactly like the router."""
    wanted = set(endpoints)
    found = []
    for route in routes:
        if not isinstance(route, APIRoute) or route.endpoint not in wanted or route.methods != {"POST"}:
            continue
        dependant = route.dependant
        if dependant.dependencies or dependant.body_params or dependant.header_params:
            continue
        if dependant.cookie_params or dependant.background_tasks_param_name or dependant.response_param_name:
            continue
        if not all(isinstance(c, StringConvertor) for c in route.param_convertors.values()):
            continue
        query = tuple(p.name for p in dependant.query_params)
        if not all(_optional_str(route.endpoint, name) for name in query):
            continue
        if any(p.alias != p.name for p in dependant.query_params):
            continue
        found.append(HotRoute(route, route.endpoint, route.path_regex, query))
    return found


def _optional_str(endpoint: Handler, name: str) -> bool:
    """True for a ``name: str | None = None`` parameter (no validation a direct call would skip)."""
    param = inspect.signature(endpoint, eval_str=True).parameters.get(name)
    return param is not None and param.default is None and param.annotation == (str | None)


class HotRoutes:
    """Calls the model routes' handlers directly; everything else goes to ``app`` unchanged.

    ``api`` is the FastAPI app; its routes and exception handlers are read when the middleware stack
    is built (the first request or the lifespan), after every router and handler is installed.
    """

    def __init__(self, app: ASGIApp, api: FastAPI, routers: Iterable[Any]) -> None:
        self.app = app
        self.routes = [r for router in routers for r in hot_routes(router.routes, hot_endpoints())]
        # The handlers the app's ExceptionMiddleware uses: 500 / Exception belong to the outermost
        # ServerErrorMiddleware, which sees what escapes from here exactly as from the router.
        handlers = {k: v for k, v in api.exception_handlers.items() if k not in (500, Exception)}
        self._handled = ExceptionMiddleware(self._call, handlers=handlers, debug=api.debug)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and scope.get("fastapi.telemetry") is None
        ):
            path = scope["path"]
            for hot in self.routes:
                match = hot.regex.match(path)
                if match is not None:
                    # what the router puts in the scope for the route it picked
                    scope["endpoint"] = hot.endpoint
                    scope["path_params"] = match.groupdict()
                    scope["route"] = hot.route
                    scope["lrbnn.hot_route"] = hot
                    await self._handled(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _call(scope: Scope, receive: Receive, send: Send) -> None:
        hot: HotRoute = scope["lrbnn.hot_route"]
        request = Request(scope, receive, send)
        kwargs: dict[str, Any] = dict(scope["path_params"])
        if hot.query:
            params = request.query_params if scope.get("query_string") else None
            for name in hot.query:
                kwargs[name] = params.get(name) if params is not None else None
        response = await hot.endpoint(request=request, **kwargs)
        await response(scope, receive, send)
