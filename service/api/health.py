"""Kubernetes probes and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from service.api.deps import app_state
from service.api.schemas import Liveness, Readiness
from service.monitoring.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["health"])
log = logging.getLogger("lrbnn.service")


@router.get("/livez", summary="200 while the process runs", responses={200: {"model": Liveness}})
async def livez() -> Response:
    return Response(b'{"status":"alive"}', media_type="application/json")


@router.get(
    "/readyz",
    summary="200 once every model is loaded and warmed up; 503 while loading or draining",
    responses={
        200: {"model": Readiness},
        503: {"model": Readiness, "description": "not ready (Retry-After)"},
    },
)
async def readyz(request: Request) -> Response:
    state = app_state(request)
    if state.ready:
        body = {"status": "ready", "models": {m.name: m.version for m in state.repository.models()}}
        return Response(orjson.dumps(body), media_type="application/json")
    if state.draining:
        status = "draining"
    elif not state.loaded:
        status = "loading"
    else:
        status = "failed" if state.repository.errors else "no models"
    body = {"status": status, "errors": state.repository.errors}
    return Response(
        orjson.dumps(body), status_code=503, media_type="application/json", headers={"Retry-After": "1"}
    )


@router.get(
    "/metrics",
    summary="Prometheus text format",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    state = app_state(request)
    state.inference.publish_drift()  # the drift gauges as the windows are now
    if state.performance is not None and state.loaded:  # two indexed queries per model, off the loop
        models = [
            (m.name, m.manifest.task, m.manifest.output_schema.labels) for m in state.repository.models()
        ]
        try:
            await asyncio.to_thread(state.performance.publish, models, time.monotonic())
        except Exception:  # the store went away: the scrape still answers, with the last values
            log.exception("performance gauges not updated")
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
