"""What one app instance holds: settings, repository, metrics, the inference path and its lifecycle.

Also the one gate every model request passes (:meth:`AppState.track`): authentication, draining,
model lookup, in-flight accounting and the request/rejection metrics, in that order, so the V1 and V2
handlers cannot drift apart on any of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from starlette.requests import ClientDisconnect, Request

from service import heap
from service.errors import ClientDisconnected, Draining, ModelNotFound, ModelNotReady, Reason, ServiceError
from service.inference import InferenceService
from service.monitoring.metrics import Metrics
from service.monitoring.performance import PerformancePublisher
from service.repository import ModelRepository, ServedModel
from service.reservations import HEADER as RETRY_HEADER
from service.reservations import NO_CLAIM, RetryClaim
from service.security import TokenSet
from service.settings import Settings
from service.store.db import PredictionStore
from service.sync import ReloadBroadcast


class Endpoint(str, Enum):
    """Values of the ``endpoint`` label (a closed set)."""

    V1_PREDICT = "v1_predict"
    V2_INFER = "v2_infer"
    V1_FEEDBACK = "v1_feedback"
    V1_PREDICT_FHIR = "v1_predict_fhir"
    CDS_PATIENT_VIEW = "cds_patient_view"
    CDS_FEEDBACK = "cds_feedback"
    GRPC_INFER = "grpc_infer"

    @property
    def computes(self) -> bool:
        """Whether a request to this endpoint queues model work (and so meets admission control)."""
        return self not in (Endpoint.V1_FEEDBACK, Endpoint.CDS_FEEDBACK)


@dataclass
class AppState:
    settings: Settings
    repository: ModelRepository
    metrics: Metrics
    inference: InferenceService
    tokens: TokenSet
    admin_tokens: TokenSet
    loaded: bool = False
    #: models loaded before the server accepted connections (a worker of several: service/workers.py)
    preloaded: bool = False
    loading: asyncio.Task[None] | None = None
    #: hot reloads shared with sibling worker processes (``LRBNN_WORKERS`` > 1), else None
    sync: ReloadBroadcast | None = None
    #: the prediction store (None: LRBNN_STORE_URL=none) and the gauges computed from it
    store: PredictionStore | None = None
    performance: PerformancePublisher | None = None
    following: asyncio.Task[None] | None = None
    #: where the OIP gRPC server listens (set by ``service.server.run_server``; None: no gRPC, e.g. tests
    #: of the ASGI app alone) and the running server
    grpc_host: str | None = None
    grpc_server: Any = None
    #: freeze the loaded heap out of the garbage collector's scans (``service.heap.settle``) once the
    #: models are loaded and after each reload: set by ``run_server`` for a serving process; apps built
    #: in a test process leave it off (each settle is a full collection of that process's heap)
    settle_heap: bool = False
    draining: bool = False
    inflight: int = 0
    started: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining and self.repository.ready

    def swap_in(self, served: ServedModel) -> None:
        """Serve a version just (re)loaded: attach it to the inference path, then settle the heap."""
        self.inference.attach(served)
        if self.settle_heap:
            heap.settle()

    def lookup(self, name: str) -> ServedModel:
        """The served model ``name``; 503 with Retry-After (not 404) while this process still loads."""
        try:
            return self.repository.get(name)
        except ModelNotFound:
            if not self.loaded:
                raise ModelNotReady("the server is still loading its models", retry_after_s=1) from None
            raise

    def authorize(self, request: Request | None, authorization: str | None = None) -> None:
        """Check the bearer token of ``request`` (REST) or the ``authorization`` value (gRPC metadata)."""
        if self.tokens.enabled:
            header = request.headers.get("authorization") if request is not None else authorization
            self.tokens.check(header, "prediction")

    @asynccontextmanager
    async def track(
        self,
        request: Request | None,
        name: str,
        endpoint: Endpoint,
        authorization: str | None = None,
        retry_token: str | None = None,
    ) -> AsyncIterator[ServedModel]:
        """Gate and measure one model request (REST: ``request``; gRPC: None and the call's
        ``authorization`` and ``lrbnn-retry-token`` metadata); yields the served model version. The
        request's retry reservation is :func:`retry_claim` inside the block."""
        t0 = time.perf_counter()
        claimed: Token[RetryClaim] | None = None
        known = self.repository.serves(name)
        code = 200
        counted = False
        try:
            self.authorize(request, authorization)
            if self.draining:
                raise Draining("the server is shutting down", retry_after_s=1)
            served = self.lookup(name)
            if not self.inference.attached(served.name):
                raise ModelNotReady(f"model {name!r} is still loading", retry_after_s=1)
            if endpoint.computes:  # a retry reservation (``service/reservations.py``) rides on a header
                header = request.headers.get(RETRY_HEADER) if request is not None else retry_token
                claim = self.inference.retry_claim(served, header)
                self.inference.check_admission(served, claim)
                claimed = _CLAIM.set(claim)
            if request is not None:
                request.state.model = served.name
            self.inflight += 1
            counted = True
            self.metrics.child(self.metrics.inflight, served.name).inc()
            yield served
        except ServiceError as exc:
            code = exc.status
            if known and exc.reason is not None:
                self.metrics.child(self.metrics.rejected, name, exc.reason.value).inc()
            raise
        except ClientDisconnect:  # the client went away while sending its body: its doing, not a 500
            code = ClientDisconnected.status
            if known:
                self.metrics.child(self.metrics.rejected, name, Reason.DISCONNECTED.value).inc()
            raise ClientDisconnected("the client disconnected while sending the request") from None
        except asyncio.CancelledError:
            code = 499  # the client went away (nginx's convention); nothing was answered
            raise
        except Exception:
            code = 500
            raise
        finally:
            if claimed is not None:
                _CLAIM.reset(claimed)
            if counted:
                self.inflight -= 1
                self.metrics.child(self.metrics.inflight, name).dec()
            if known:
                self.metrics.child(self.metrics.request_duration, name, endpoint.value, str(code)).observe(
                    time.perf_counter() - t0
                )


#: the retry reservation of the request being tracked: a context variable because each request (and
#: each gRPC call) runs in a task of its own, and REST and gRPC hand it to the batcher the same way
_CLAIM: ContextVar[RetryClaim] = ContextVar("lrbnn_retry_claim", default=NO_CLAIM)


def retry_claim() -> RetryClaim:
    """The retry reservation :meth:`AppState.track` read for the current request (none outside one)."""
    return _CLAIM.get()
