"""Structured JSON logs: one object per line; a request line carries id, model, instances, latency.

Feature values never reach a log line: handlers annotate the request with the model name and the
instance count only, and error messages that echo client input go to the client, not to the log.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import random
import sys
import time
from queue import SimpleQueue
from typing import Any

import orjson

from service.security import Scope

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
access_log = logging.getLogger("lrbnn.service.access")
_ids = random.Random()  # seeded from os.urandom once, per process (workers are spawned, not forked)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,  # which worker, when LRBNN_WORKERS > 1
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str) -> None:
    """JSON lines on stderr, written by a listener thread: the event loop only formats the line and
    queues it (stdlib ``QueueHandler``, the logging cookbook's pattern for code that must not block).

    Why: one access line per request, written by the loop itself, is a blocking ``write`` that gives up
    the GIL; getting it back waits for the compute thread. Under sustained overload that was 28 % of the
    loop's time (py-spy, docs/reliability.md), spent on lines for refused requests. The lines are the
    same; a line still queued when the process is killed with SIGKILL is lost (``atexit`` drains the
    queue on a normal exit).
    """
    global _listener
    if _listener is not None:
        _listener.stop()
    queue: SimpleQueue[logging.LogRecord] = SimpleQueue()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(logging.Formatter("%(message)s"))  # the record arrives formatted
    _listener = logging.handlers.QueueListener(queue, writer)
    _listener.start()
    handler = logging.handlers.QueueHandler(queue)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("lrbnn")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


@atexit.register
def _drain_logs() -> None:
    if _listener is not None:
        _listener.stop()


def request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when sane (1-128 ASCII bytes), else 32 fresh random hex digits.

    From Python's Mersenne Twister, not ``uuid4``: an id must be unique, not unguessable, and
    ``uuid4`` reads ``os.urandom``, a system call that lets the compute thread take the interpreter
    lock from the event loop on every request. Each process seeds its generator from the OS at start.
    """
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
            return str(value.decode().strip())
    return f"{_ids.getrandbits(128):032x}"


def log_request(
    rid: str, method: str | None, path: str | None, status: int, state: dict[str, Any], t0: float
) -> None:
    """The access-log line of one request: ids, status, model and instance count, never a feature value."""
    access_log.info(
        "request",
        extra={
            "request_id": rid,
            "method": method,
            "path": path,
            "status": status,
            "model": state.get("model"),
            "instances": state.get("instances"),
            "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
        },
    )
