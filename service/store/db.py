"""The prediction store: an SQLAlchemy database (SQLite under ``LRBNN_STATE_DIR`` by default), written off
the request path by one thread per process, read by the feedback endpoint and the performance gauges.

Why a writer thread and a bounded queue rather than a write per request: a prediction must never wait
for, or fail because of, the database. ``submit`` costs a lock and an append on the event loop; the
thread turns queued batches into rows and inserts them in one transaction every ``flush_interval_s``
(50 ms). When the database is unreachable the batches wait (retried every second) until the queue holds
``queue_limit`` instances; beyond that new predictions are answered but not stored, and every instance
is counted in ``lrbnn_store_predictions_total{result}`` (``stored``, ``queue_full``, ``error``).

Outcomes are the opposite: an acknowledged outcome must be durable, so ``record_outcomes`` writes and
commits before the endpoint answers (SQLite: WAL with ``synchronous=FULL``, so a commit survives a
SIGKILL or a power loss; PostgreSQL commits are durable by default).

Several processes on one host share one SQLite file (WAL: readers never block the writer; a
``busy_timeout`` covers two writers), migrated once under a file lock; PostgreSQL serialises the
migration with an advisory lock (``migrations/env.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine, Table, delete, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from service.store.engine import make_engine, migrate
from service.store.records import JoinedOutcome, PredictionBatch, StoreResult
from service.store.schema import card_feedback, outcomes, predictions

log = logging.getLogger("lrbnn.service.store")

RETRY_S = 1.0
PURGE_EVERY_S = 3600.0


class PredictionStore:
    """The store of one server process; thread-safe. ``open`` starts the writer, ``close`` drains it."""

    def __init__(
        self,
        url: str,
        queue_limit: int = 100_000,
        retention_s: float = 90 * 86400.0,
        flush_interval_s: float = 0.05,
        counted: Callable[[str, StoreResult, int], None] | None = None,
    ) -> None:
        self.url = url
        self.queue_limit = queue_limit
        self.retention_s = retention_s
        self.flush_interval_s = flush_interval_s
        self._counted = counted or (lambda model, result, n: None)
        self._cond = threading.Condition()
        self._pending: deque[tuple[int, PredictionBatch]] = deque()
        self._queued = 0  # instances in _pending
        self._submitted = 0  # batch sequence numbers
        self._written = 0  # every batch up to this number is written (or dropped)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.engine: Engine | None = None
        #: the last reason the database could not be used (None: it works)
        self.error: str | None = "not opened yet"
        self._last_purge = -float("inf")
        self._attempted = False  # the first connection attempt has finished (either way)

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> None:
        """Start the writer thread; it connects and migrates (retrying while the database is down)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-store", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) for the first connection attempt; True when the store is open."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.engine is None and not self._attempted and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            return self.engine is not None

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (at most ``timeout_s``), stop the thread, release the connections."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if self.engine is not None:
            self.engine.dispose()

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.error is None

    # -- predictions (event loop side) ---------------------------------------------------------
    def submit(self, batch: PredictionBatch) -> bool:
        """Queue one request's predictions; False (counted ``queue_full``) when the queue is full."""
        n = len(batch.ids)
        with self._cond:
            if self._queued + n > self.queue_limit or self._stopping:
                full = True
            else:
                full = False
                self._submitted += 1
                self._pending.append((self._submitted, batch))
                self._queued += n
                if len(self._pending) == 1:
                    self._cond.notify_all()
        if full:
            self._counted(batch.model, StoreResult.QUEUE_FULL, n)
        return not full

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything submitted before this call is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._submitted
            self._cond.notify_all()
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=left)
        return True

    # -- the writer thread ---------------------------------------------------------------------
    def _connect(self) -> bool:
        try:
            engine = make_engine(self.url)
            migrate(engine)
        except Exception as exc:  # unreachable, bad credentials, a read-only folder: keep serving
            self._failed(exc, "prediction store not opened")
            with self._cond:
                self._attempted = True
                self._cond.notify_all()
            return False
        with self._cond:
            self.engine = engine
            self.error = None
            self._cond.notify_all()
        log.info("prediction store open", extra={"url": engine.url.render_as_string(hide_password=True)})
        return True

    def _failed(self, exc: BaseException, what: str) -> None:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if message != self.error:
            log.error(what, extra={"error": message})
        self.error = message

    def _run(self) -> None:
        while self.engine is None:
            if self._connect():
                break
            with self._cond:
                if self._stopping:
                    self._drop_all()
                    return
                self._cond.wait(timeout=RETRY_S)
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    self._cond.wait(timeout=self.flush_interval_s)
                if not self._pending:
                    if self._stopping:
                        return
                    self._maybe_purge()
                    continue
            if not self._stopping:
                time.sleep(self.flush_interval_s)  # let a burst gather into one transaction
            with self._cond:
                taken = list(self._pending)
            if not self._write(taken):
                with self._cond:
                    if self._stopping:
                        self._drop_all()
                        return
                    self._cond.wait(timeout=RETRY_S)
                continue
            self._maybe_purge()

    def _write(self, taken: list[tuple[int, PredictionBatch]]) -> bool:
        """Insert ``taken`` in one transaction; False (keep them queued) when the database is down."""
        assert self.engine is not None
        rows = [row for _, batch in taken for row in batch.rows()]
        result = StoreResult.STORED
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(predictions), rows)
            self.error = None
        except OperationalError as exc:  # connection lost, database locked too long: retried
            self._failed(exc, "predictions not stored yet (retrying)")
            return False
        except SQLAlchemyError as exc:  # a row the database refuses: dropped, not retried forever
            self._failed(exc, "predictions dropped")
            result = StoreResult.ERROR
        with self._cond:
            for _ in taken:
                self._pending.popleft()
            self._queued -= sum(len(b.ids) for _, b in taken)
            self._written = taken[-1][0]
            self._cond.notify_all()
        for _, batch in taken:
            self._counted(batch.model, result, len(batch.ids))
        return True

    def _drop_all(self) -> None:
        """(lock held) At shutdown with the database down: count what can no longer be written."""
        for _, batch in self._pending:
            self._counted(batch.model, StoreResult.ERROR, len(batch.ids))
        if self._pending:
            self._written = self._pending[-1][0]
        self._pending.clear()
        self._queued = 0
        self._cond.notify_all()

    def _maybe_purge(self) -> None:
        now = time.time()
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            try:
                self.purge(now - self.retention_s)
            except SQLAlchemyError as exc:
                self._failed(exc, "retention purge failed")

    def purge(self, before: float) -> int:
        """Delete the predictions made before ``before`` (Unix s) and their outcomes; returns the count."""
        assert self.engine is not None
        old = select(predictions.c.id).where(predictions.c.created < before)
        with self.engine.begin() as conn:
            conn.execute(delete(outcomes).where(outcomes.c.prediction_id.in_(old)))
            conn.execute(delete(card_feedback).where(card_feedback.c.prediction_id.in_(old)))
            gone = conn.execute(delete(predictions).where(predictions.c.created < before)).rowcount
        if gone:
            log.info("retention purge", extra={"deleted": gone})
        return int(gone or 0)

    # -- outcomes ------------------------------------------------------------------------------
    def lookup(self, model: str, ids: Sequence[str]) -> dict[str, tuple[float, bool]]:
        """For the ids of ``model`` that are stored: (created, has an outcome already)."""
        assert self.engine is not None
        found: dict[str, tuple[float, bool]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids)), 500):
                q = (
                    select(predictions.c.id, predictions.c.created, outcomes.c.prediction_id)
                    .outerjoin(outcomes, outcomes.c.prediction_id == predictions.c.id)
                    .where(predictions.c.model == model, predictions.c.id.in_(chunk))
                )
                for pid, created, has in conn.execute(q):
                    found[pid] = (float(created), has is not None)
        return found

    def record_outcomes(self, model: str, values: dict[str, float], received: float) -> set[str]:
        """Insert and commit one outcome per id (the first one stands); returns the ids that already had
        one (a concurrent request, perhaps in another worker, won the race)."""
        rows = [
            {"prediction_id": k, "model": model, "value": v, "received": received} for k, v in values.items()
        ]
        return self._insert_first_standing(outcomes, rows)

    def record_card_feedback(
        self, model: str, items: dict[str, tuple[str, str | None]], received: float
    ) -> set[str]:
        """Insert and commit CDS card feedback (id -> (outcome, override reason)), the first one standing
        per prediction; returns the ids that already had feedback."""
        rows = [
            {"prediction_id": k, "model": model, "outcome": o, "override_reason": r, "received": received}
            for k, (o, r) in items.items()
        ]
        return self._insert_first_standing(card_feedback, rows)

    def _insert_first_standing(self, table: Table, rows: list[dict[str, Any]]) -> set[str]:
        """Insert ``rows`` keyed by ``prediction_id`` in one transaction; when one is taken already, row by
        row, so the others commit; returns the ids that were taken."""
        assert self.engine is not None
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(table), rows)
            return set()
        except IntegrityError:
            pass
        taken: set[str] = set()
        with self.engine.connect() as conn:
            for row in rows:
                try:
                    with conn.begin():
                        conn.execute(insert(table), [row])
                except IntegrityError:
                    taken.add(str(row["prediction_id"]))
        return taken

    # -- windows for the performance gauges ----------------------------------------------------
    def recent_outcomes(self, model: str, limit: int) -> list[JoinedOutcome]:
        """The ``limit`` latest outcomes of ``model`` (by arrival) with their predictions."""
        assert self.engine is not None
        q = (
            select(outcomes.c.value, outcomes.c.received, predictions.c.created, predictions.c.outputs)
            .join(predictions, predictions.c.id == outcomes.c.prediction_id)
            .where(outcomes.c.model == model)
            .order_by(outcomes.c.received.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                JoinedOutcome(float(v), float(r), float(c), orjson.loads(o)) for v, r, c, o in conn.execute(q)
            ]

    def recent_outputs(self, model: str, limit: int) -> list[dict[str, Any]]:
        """The outputs of the ``limit`` latest predictions of ``model``."""
        assert self.engine is not None
        q = (
            select(predictions.c.outputs)
            .where(predictions.c.model == model)
            .order_by(predictions.c.created.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [orjson.loads(o) for (o,) in conn.execute(q)]

    def count(self, model: str) -> tuple[int, int]:
        """(predictions, outcomes) stored for ``model``."""
        assert self.engine is not None
        with self.engine.connect() as conn:
            n_pred = conn.execute(
                select(func.count()).select_from(predictions).where(predictions.c.model == model)
            ).scalar_one()
            n_out = conn.execute(
                select(func.count()).select_from(outcomes).where(outcomes.c.model == model)
            ).scalar_one()
        return int(n_pred), int(n_out)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


__all__ = ["PredictionStore"]
