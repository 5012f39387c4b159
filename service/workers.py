"""``run_workers(settings, host, port, n)``: n server processes sharing one listening socket.

Why: a server process parses HTTP, validates, preprocesses, records metrics and logs on one event-loop
thread, so for small models it uses about one core however many the machine has (the sampling itself
runs in a compute thread and is the smaller part). n processes use n cores.

How: this supervisor binds the socket once and starts n workers with multiprocessing's ``spawn`` (a
fresh interpreter each: no torch or thread state is forked). Each worker is a whole server
(``service.server.run_server``): it loads every model, has its own batching queues, admission estimate
and drift window, and accepts connections from the shared socket. Shared across workers:

* metrics: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary folder per run, removed at exit), so
  ``/metrics`` on any worker aggregates all of them (``service/monitoring/metrics.py``);
* hot reload: a reload accepted by one worker is followed by the others (``service/sync.py``).

A worker loads its models before it takes connections from the socket, so a client never meets a worker
that is still loading while its siblings serve (a replaced worker loads unseen). At the first start no
worker accepts until one has loaded: connections wait in the listen backlog (``/livez`` too, which a
Kubernetes startup probe allows for).

Signals: workers run in sessions of their own and are told to die with the supervisor
(``PR_SET_PDEATHSIG``), so only the supervisor signals them: a terminal's Ctrl-C or a ``kill`` of the
process group reaches each worker exactly once. On SIGTERM or SIGINT the supervisor sends every worker
one SIGTERM; each drains as a single server does (``/readyz`` 503, in-flight requests finish); the
supervisor exits 0 when every worker exited 0 (or was still loading, so the signal ended it before it
took a connection). A worker that dies while serving is restarted; if workers
keep dying within seconds of starting, the supervisor gives up and exits 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from service.monitoring.drift_share import DriftShare
from service.settings import Settings
from service.sync import SYNC_DIR_ENV

log = logging.getLogger("lrbnn.service.workers")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: a worker that exits within this many seconds of its start counts as a failed start
QUICK_EXIT_S = 10.0
#: consecutive failed starts after which the supervisor stops instead of restarting forever
MAX_FAILED_STARTS = 3
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before the request above took effect
        sys.exit(1)


def _worker(sock: socket.socket, settings: Settings, host: str, port: int, parent: int) -> None:
    """A worker process's entry point: a whole server on the inherited socket.

    ``settings`` is the supervisor's object (pickled by ``spawn``), not re-read from the environment, so
    settings made in code reach every worker as they reach a single server.
    """
    os.setsid()  # out of the supervisor's process group: only the supervisor signals a worker
    _die_with_parent(parent)
    from service.server import run_server  # imported here: the worker is a fresh interpreter

    sys.exit(run_server(settings, host, port, sockets=[sock], preload=True))


class Supervisor:
    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.workers = workers
        self.stop = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self._started: list[float] = []
        self._failed_starts = 0

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _spawn(self, sock: socket.socket) -> BaseProcess:
        proc = self._ctx.Process(
            target=_worker,
            args=(sock, self.settings, self.host, self.port, os.getpid()),
            name="lrbnn-worker",
            daemon=False,
        )
        proc.start()
        return proc

    def _handle(self, signum: int, _frame: object) -> None:
        if not self.stop.is_set():
            log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
        self.stop.set()

    def run(self) -> int:
        sock = self._bind()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        for _ in range(self.workers):
            self._procs.append(self._spawn(sock))
            self._started.append(time.monotonic())
        log.info(
            "workers started",
            extra={"workers": self.workers, "pids": [p.pid for p in self._procs], "port": self.port},
        )
        status = 0
        while not self.stop.wait(0.2):
            if not self._keep_alive(sock):
                status = 1
                break
        return max(status, self._shutdown())

    def _keep_alive(self, sock: socket.socket) -> bool:
        """Restart workers that died; False when they keep failing right after their start."""
        for i, proc in enumerate(self._procs):
            if proc.is_alive() or self.stop.is_set():
                continue
            _mark_dead(proc.pid)
            lived = time.monotonic() - self._started[i]
            self._failed_starts = self._failed_starts + 1 if lived < QUICK_EXIT_S else 0
            log.error(
                "worker died",
                extra={"pid": proc.pid, "exitcode": proc.exitcode, "lived_s": round(lived, 1)},
            )
            if self._failed_starts >= MAX_FAILED_STARTS:
                log.error(
                    "workers keep failing at start; stopping", extra={"failed_starts": self._failed_starts}
                )
                return False
            self._procs[i] = self._spawn(sock)
            self._started[i] = time.monotonic()
        return True

    def _shutdown(self) -> int:
        """SIGTERM every worker once, wait for their drains, return 0 when all exited 0."""
        for proc in self._procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + 15.0
        status = 0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker did not stop in time; killed", extra={"pid": proc.pid})
                proc.kill()
                proc.join(5)
                status = 1
            elif proc.exitcode == -signal.SIGTERM:
                # killed by our own SIGTERM, i.e. before uvicorn installed its handlers, i.e. before it
                # took a connection (a worker loads its models first): nothing was in flight there
                log.info("worker stopped before it served", extra={"pid": proc.pid})
            elif proc.exitcode != 0:
                status = 1
            _mark_dead(proc.pid)
        log.info("workers stopped", extra={"exitcodes": [p.exitcode for p in self._procs]})
        return status


def _mark_dead(pid: int | None) -> None:
    """Drop a dead worker's live-gauge files (its in-flight count must not linger in the sums) and its
    drift windows (a replacement starts an empty window; the dead one's would never age out)."""
    folder = os.environ.get(METRICS_DIR_ENV)
    if pid is None or not folder:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, folder)
    share = DriftShare.from_env()
    if share is not None:
        share.forget(pid)


def run_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve with ``workers`` processes until SIGTERM/SIGINT; returns the exit status."""
    shared = Path(tempfile.mkdtemp(prefix="lrbnn-workers-"))
    metrics_dir, sync_dir = shared / "metrics", shared / "reload"
    metrics_dir.mkdir()
    sync_dir.mkdir()
    # the workers get ``settings`` itself; the environment carries only the two shared folders (the
    # prometheus-client library reads its folder from there)
    saved = {k: os.environ.get(k) for k in (METRICS_DIR_ENV, SYNC_DIR_ENV)}
    os.environ[METRICS_DIR_ENV] = str(metrics_dir)
    os.environ[SYNC_DIR_ENV] = str(sync_dir)
    try:
        return Supervisor(settings, host, port, workers).run()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(shared, ignore_errors=True)
