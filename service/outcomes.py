"""Outcomes reported after the fact (``POST /v1/models/{name}/feedback``): checked, joined, stored durably.

Each outcome gets one status: ``accepted`` (stored and committed before the answer), ``unknown`` (no
stored prediction of this model has that id: never made, made by another model, purged by retention, or
made while the store could not keep it), ``duplicate`` (the prediction has an outcome already: the first
one stands, so repeating a request changes nothing) or ``invalid`` (a value of the wrong type for the
model's task, with the reason). A malformed body is a 400/422 naming the field, as everywhere else.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from model_core.checkpoint.manifest import Manifest, Task
from service.errors import ServiceError
from service.monitoring.metrics import Metrics
from service.store.db import PredictionStore
from service.store.records import OutcomeStatus

#: how long a feedback request waits for this process's queued predictions to be written, so that an
#: outcome sent right after its prediction finds it (the writer flushes every 50 ms)
FLUSH_WAIT_S = 2.0
#: ids not found are looked up once more after this: a prediction another worker answered a moment
#: ago may still sit in that worker's queue (written within one flush interval, 50 ms, plus its commit)
OTHER_WRITERS_S = 0.25


class StoreUnavailable(ServiceError):
    """The prediction store is off or cannot be reached: feedback cannot be taken now (503)."""

    status = 503


def outcome_value(manifest: Manifest, value: Any) -> float:
    """The stored form of one outcome: the observed value (regression) or the class index.

    Classification takes a label name of the manifest, or its index (an integer; ``true``/``false`` for
    the positive / other class of a binary model). Raises ``ValueError`` naming what is wrong.
    """
    labels = manifest.output_schema.labels or []
    if manifest.task is Task.REGRESSION:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"a regression outcome is a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError("a regression outcome must be finite")
        return float(value)
    classes = len(labels) if labels else (2 if manifest.task is Task.BINARY else 0)
    if isinstance(value, bool):
        if manifest.task is not Task.BINARY:
            raise ValueError("true/false is an outcome of a binary model only; send a label")
        return 1.0 if value else 0.0
    if isinstance(value, str):
        if value not in labels:
            raise ValueError(f"unknown label {value!r}; labels: {labels}")
        return float(labels.index(value))
    if isinstance(value, int):
        if not 0 <= value < classes:
            raise ValueError(f"a class index is between 0 and {classes - 1}, got {value}")
        return float(value)
    if isinstance(value, float) and value.is_integer() and 0 <= value < classes:
        return value
    raise ValueError(f"a classification outcome is a label or a class index, got {value!r}")


@dataclass
class FeedbackResult:
    accepted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)

    def payload(self, model: str) -> dict[str, Any]:
        return {
            "model_name": model,
            OutcomeStatus.ACCEPTED.value: self.accepted,
            OutcomeStatus.UNKNOWN.value: self.unknown,
            OutcomeStatus.DUPLICATE.value: self.duplicate,
            OutcomeStatus.INVALID.value: self.invalid,
        }


def find_predictions(store: PredictionStore, model: str, ids: list[str]) -> dict[str, tuple[float, bool]]:
    """The stored predictions among ``ids`` (``PredictionStore.lookup``), after this process's queue is
    written and, for ids not found, once more after another worker's writer had time to commit them."""
    store.flush(FLUSH_WAIT_S)
    known = store.lookup(model, ids)
    missing = [pid for pid in ids if pid not in known]
    if missing:
        time.sleep(OTHER_WRITERS_S)
        known.update(store.lookup(model, missing))
    return known


def record_card_feedback(
    store: PredictionStore, model: str, items: dict[str, tuple[str, str | None]], metrics: Metrics
) -> FeedbackResult:
    """Store CDS Hooks card feedback (card uuid = prediction id -> (outcome, coded override reason)),
    the first one standing per card; runs in a worker thread."""
    result = FeedbackResult()
    known = find_predictions(store, model, list(items))
    result.unknown = [pid for pid in items if pid not in known]
    fresh = {pid: v for pid, v in items.items() if pid in known}
    taken = store.record_card_feedback(model, fresh, time.time()) if fresh else set()
    for pid, (outcome, _) in fresh.items():
        if pid in taken:
            result.duplicate.append(pid)
        else:
            result.accepted.append(pid)
            metrics.child(metrics.card_feedback, model, outcome).inc()
    return result


async def card_feedback(
    store: PredictionStore | None, model: str, items: dict[str, tuple[str, str | None]], metrics: Metrics
) -> FeedbackResult:
    """:func:`record_card_feedback` off the event loop, with the store's availability checked first."""
    work = asyncio.to_thread(record_card_feedback, open_store(store), model, items, metrics)
    return await _guarded(work)


def record_feedback(
    store: PredictionStore, manifest: Manifest, model: str, items: list[tuple[str, Any]], metrics: Metrics
) -> FeedbackResult:
    """Classify and store ``items`` (prediction id, value); runs in a worker thread (it blocks on I/O)."""
    result = FeedbackResult()
    values: dict[str, float] = {}
    seen: set[str] = set()
    known = find_predictions(store, model, [pid for pid, _ in items])
    for pid, raw in items:
        if pid in seen:
            result.duplicate.append(pid)
            continue
        seen.add(pid)
        if pid not in known:
            result.unknown.append(pid)
            continue
        try:
            value = outcome_value(manifest, raw)
        except ValueError as exc:
            result.invalid.append({"prediction_id": pid, "error": str(exc)})
            continue
        if known[pid][1]:
            result.duplicate.append(pid)
            continue
        values[pid] = value
    if values:
        received = time.time()
        raced = store.record_outcomes(model, values, received)
        delays = metrics.child(metrics.outcome_delay, model)
        for pid in values:
            if pid in raced:
                result.duplicate.append(pid)
            else:
                result.accepted.append(pid)
                delays.observe(max(0.0, received - known[pid][0]))
        metrics.child(metrics.outcomes, model).inc(len(values) - len(raced))
    return result


async def feedback(
    store: PredictionStore | None,
    manifest: Manifest,
    model: str,
    items: list[tuple[str, Any]],
    metrics: Metrics,
) -> FeedbackResult:
    work = asyncio.to_thread(record_feedback, open_store(store), manifest, model, items, metrics)
    return await _guarded(work)


def open_store(store: PredictionStore | None) -> PredictionStore:
    """The store, when it is on and reachable; else the 503 that says which."""
    if store is None:
        raise StoreUnavailable("feedback is off: the prediction store is disabled (LRBNN_STORE_URL=none)")
    if not store.ready:
        raise StoreUnavailable(f"the prediction store is not reachable: {store.error}", retry_after_s=5)
    return store


async def _guarded(work: Coroutine[Any, Any, FeedbackResult]) -> FeedbackResult:
    try:
        return await work
    except ServiceError:
        raise
    except Exception as exc:  # the database went away mid-request: nothing was acknowledged
        raise StoreUnavailable(
            f"the prediction store failed ({type(exc).__name__}); nothing of this request was stored",
            retry_after_s=5,
        ) from exc
