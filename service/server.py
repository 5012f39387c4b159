"""One server process: uvicorn with a graceful drain (``run_server``), for ``serve`` and each worker.

On the first SIGTERM/SIGINT the server drains: ``/readyz`` turns 503, new model requests get 503 with
``Retry-After``, in-flight ones finish (at most ``LRBNN_DRAIN_TIMEOUT_S``), then uvicorn shuts down.
uvicorn would re-raise the captured signal after its shutdown (turning a clean drain into exit status
143); :class:`DrainingServer` does not record the signal, so ``run_server`` returns 0. A second signal
exits at once. Its own module so that the supervisor (``service/workers.py``) and ``service/main.py``
both import it without importing each other.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from types import FrameType

import uvicorn

from service.app import create_app
from service.settings import Settings
from service.state import AppState

log = logging.getLogger("lrbnn.service")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.state = state
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is not None:  # second signal: stop now
            self.should_exit = True
            self.force_exit = True
            return
        self.drain_started = time.monotonic()
        self.state.draining = True
        log.info("draining", extra={"signal": signal.Signals(sig).name, "inflight": self.state.inflight})

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self.drain_started is None:
            return False
        waited = time.monotonic() - self.drain_started
        if self.state.inflight == 0 or waited >= self.state.settings.drain_timeout_s:
            log.info("drained", extra={"inflight_left": self.state.inflight, "waited_s": round(waited, 3)})
            self.should_exit = True
            return True
        return False


def run_server(
    settings: Settings,
    host: str,
    port: int,
    sockets: list[socket.socket] | None = None,
    preload: bool = False,
) -> int:
    """One server process until a signal drains it (on ``sockets`` when a supervisor bound them).

    ``preload`` loads every model before the server takes a connection: a worker of several
    (``service/workers.py``) then never answers 503 "loading" from a shared socket while its siblings
    serve, e.g. when it replaces a worker that died. A single server opens the socket at once instead,
    so ``/livez`` answers during a slow start.
    """
    app = create_app(settings)
    app.state.lrbnn.grpc_host = host
    app.state.lrbnn.settle_heap = True  # a serving process: its loaded heap is frozen (service/heap.py)
    if preload:
        state = app.state.lrbnn
        state.repository.load_all()
        if state.sync is not None:  # a reload published while this worker was not running
            state.sync.reconcile(state.repository)
        state.preloaded = True
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # uvloop and httptools (the ``serve`` extra) when importable, else asyncio and h11: the event
        # loop is the bottleneck of small requests, and these two spend less of its CPU per request
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        timeout_keep_alive=max(1, math.ceil(settings.keep_alive_s)),
    )
    server = DrainingServer(config, app.state.lrbnn)
    server.run(sockets=sockets)
    if not server.started:
        return 1
    return 0
