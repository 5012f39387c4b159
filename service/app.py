"""``create_app(settings)``: routers, middleware and a lifespan that loads and warms every model.

``/readyz`` turns 200 only after every model is loaded and warmed up; loading runs in a background
task (the heavy part in a worker thread) so ``/livez`` answers during a slow start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import fhir, heap
from service.aio import cancel_and_wait
from service.api import cds, errors, health, v1, v2
from service.api import fhir as fhir_api
from service.api.openapi import OpenAPIDocument
from service.fastpath import EdgeMiddleware, HotRoutes
from service.fhir.bundle import FeatureIndex
from service.inference import InferenceService
from service.logs import configure_logging
from service.monitoring.drift_share import DriftShare
from service.monitoring.metrics import Metrics
from service.monitoring.performance import PerformancePublisher
from service.repository import ModelRepository
from service.security import TokenSet
from service.settings import Settings
from service.state import AppState
from service.store.db import PredictionStore
from service.store.records import StoreResult
from service.sync import ReloadBroadcast

log = logging.getLogger("lrbnn.service")
#: how long start-up waits for the store's first connection attempt (it never waits for a working
#: store: predictions are served and queued while the writer retries)
STORE_OPEN_WAIT_S = 10.0


def build_store(settings: Settings, metrics: Metrics) -> PredictionStore | None:
    """The prediction store of this process (not yet open), or None when ``LRBNN_STORE_URL=none``."""
    if not settings.store_enabled:
        return None

    def counted(model: str, result: StoreResult, n: int) -> None:
        metrics.child(metrics.store_predictions, model, result.value).inc(n)

    return PredictionStore(
        settings.resolved_store_url(),
        queue_limit=settings.store_queue,
        retention_s=settings.store_retention_days * 86400.0,
        counted=counted,
    )


def build_state(settings: Settings) -> AppState:
    metrics = Metrics()
    admin = settings.admin()
    store = build_store(settings, metrics)
    return AppState(
        settings=settings,
        repository=ModelRepository(settings),
        metrics=metrics,
        inference=InferenceService(settings, metrics, DriftShare.from_env(), store),
        tokens=TokenSet(settings.tokens()),
        admin_tokens=TokenSet([admin] if admin else []),
        sync=ReloadBroadcast.from_env(),
        store=store,
        performance=None
        if store is None
        else PerformancePublisher(store, metrics, settings.performance_window),
    )


async def load_models(state: AppState) -> None:
    """Load, verify and warm up every model in a worker thread (unless preloaded), attach them to the
    inference path, then turn ``/readyz`` green."""
    if not state.preloaded:
        await asyncio.to_thread(state.repository.load_all)
    for served in state.repository.models():
        state.inference.attach(served)
    if any(FeatureIndex(s.inputs.features()) for s in state.repository.models()):
        await asyncio.to_thread(fhir.warm)
    if state.sync is not None:  # one of several workers: follow the reloads the others publish
        state.following = asyncio.create_task(
            state.sync.follow(state.repository, state.swap_in), name="follow-reloads"
        )
    state.inference.start_sharing()  # with several workers: the drift windows, merged by every scrape
    if state.settle_heap:  # everything long-lived is loaded now (service/heap.py)
        await asyncio.to_thread(heap.settle)
    state.loaded = True
    if state.store is not None:
        # after the models serve (predictions queue meanwhile; a worker replacing a dead one must not
        # answer 503 while it connects): this task ends with the store open or its first failure logged
        await asyncio.to_thread(state.store.wait_ready, STORE_OPEN_WAIT_S)
    log.info(
        "ready" if state.repository.ready else "started with failed models",
        extra={
            "models": {m.name: m.version for m in state.repository.models()},
            "failed": list(state.repository.errors),
        },
    )


async def start_grpc(state: AppState) -> None:
    """The OIP gRPC server on ``LRBNN_GRPC_PORT`` (0: off), on this event loop, when a real server runs."""
    port = state.settings.grpc_port
    if state.grpc_host is None or port == 0:
        return
    from service.grpc_api.server import build_server  # grpcio: only a server with gRPC on needs it

    server = build_server(state, state.grpc_host, port)
    await server.start()
    state.grpc_server = server
    log.info("grpc listening", extra={"host": state.grpc_host, "port": port})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Loading runs in the background so the socket opens at once: ``/livez`` answers 200 and
    ``/readyz`` 503 during a slow start, instead of connection refused (which restarts pods)."""
    state: AppState = app.state.lrbnn
    if state.store is not None:  # connects and migrates in its own thread; predictions queue meanwhile
        state.store.open()
    loading = asyncio.create_task(load_models(state), name="load-models")
    state.loading = loading
    await start_grpc(state)
    try:
        yield
    finally:
        state.draining = True
        if state.grpc_server is not None:  # in-flight calls drained with REST's (AppState.inflight)
            await state.grpc_server.stop(grace=1.0)
        await cancel_and_wait(loading)
        await cancel_and_wait(state.following)
        await state.inference.stop()
        if state.store is not None:  # what the batchers answered last is written before exit
            await asyncio.to_thread(state.store.close)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="lrbnn model server",
        version="0.1.0",
        description="Low-rank Bayesian neural networks served with calibrated uncertainty and OOD flags.",
        lifespan=lifespan,
        # the service exports its own Prometheus metrics and configures no OpenTelemetry provider;
        # FastAPI's native telemetry would still look the providers up on every request (~20 us)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.lrbnn = build_state(settings)
    errors.install(app)
    for router in (health.router, v1.router, v2.router, fhir_api.router, cds.router):
        app.include_router(router)
    # added last = outermost. HotRoutes, innermost (inside CORS), answers the model requests without
    # the router; EdgeMiddleware, outermost, gives every answer its request id, access-log line and
    # body limit (see service/fastpath.py).
    app.add_middleware(HotRoutes, api=app, routers=(v1.router, v2.router))
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(
        EdgeMiddleware, max_bytes=settings.max_body_bytes, fhir_max_bytes=settings.fhir_max_body_bytes
    )
    # the document lists one predict/infer operation per served model, rebuilt when they change
    app.openapi = OpenAPIDocument(app)  # type: ignore[method-assign]
    return app
