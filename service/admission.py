"""Admission control of one model's queue: a time budget, a count bound, a deadline, ``Retry-After``.

Back-pressure, two bounds, either one refuses with 429 and ``Retry-After``:

* by estimated work (``max_wait_s``, ``LRBNN_MAX_QUEUE_WAIT_MS``, default 1 s): a request is refused when
  the estimated time from its arrival to its answer exceeds the budget. The estimate is the work already
  ahead of it plus one full batch of its kind (its own batch, which may take up to ``max_rows``
  rows), in *cost units* (``rows * samples`` plus a fixed per-request term, see ``Job.units``), times
  the measured seconds per unit (:class:`CostEstimate`), plus what is left of the batch now running.
  So a burst whose work the server drains within the budget is admitted in full, whatever its count,
  and under sustained overload the queue holds about one budget of work: a count bound cannot tell 8
  one-row requests at S=32 from 8 64-row requests at S=1024.
* by count (``max_queue``, default 4096): a memory safety limit, far above what the time budget admits
  of ordinary requests, for when the estimate is wrong.

The estimate cannot be fooled by a cold or idle server: it learns how fast finished batches drained
the queue, timed inside the compute thread: a batch that followed its predecessor back to back counts
from that batch's end (the event loop's delay in resuming the dispatcher is part of how fast a busy
queue drains), any other batch by its compute time alone (idle time never counts). It is the median
of the last ``CostEstimate.WINDOW`` batches' seconds per unit (the minimum while fewer than three are
measured), so neither a cold first batch nor one slow batch after a pause moves it. The running batch
counts with what its estimate says is left; only a batch that has overrun its estimate by more than
the whole budget (a model that really stalled) raises the rate to what it shows. A request that finds
the queue empty is always admitted, and so is every request while nothing has been measured yet (the
count bound still holds).

The estimate is a median, so a request admitted by it gets a deadline, its first admission plus the budget:
one that has waited so long that its batch would end past it is refused at dispatch (429 with
``Retry-After``, Triton's ``timeout_action: REJECT``) instead of being computed late.

``Retry-After`` is the time until the queued work has drained far enough that a request like the
refused one would be admitted if nothing new arrived (estimated wait minus budget; for the count bound,
until enough queued requests have left), whole seconds rounded up, >= 1. Under sustained overload new
requests do arrive, so that is a hint; a client that asks for a reservation gets a promise instead
(``service/reservations.py``): a token with a due time that the book has room for, admitted whatever
the queue when it comes back. Fresh admission counts the work booked for the next budget's worth of
seconds as queued, so that there is room for it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from service.cost import CostEstimate
from service.errors import QueueFull
from service.monitoring.metrics import Metrics
from service.reservations import NO_CLAIM, RetryBook, RetryClaim

#: the fixed cost of one request in cost units (see ``Queued.units``)
REQUEST_UNITS = 128


def request_units(rows: int, samples: int) -> int:
    """The cost of one request in units: its row-samples plus ``REQUEST_UNITS`` (each request is one
    network pass in exact mode: measured on the bundled model, about 128 row-samples' worth)."""
    return rows * samples + REQUEST_UNITS


class Queued(Protocol):
    """What admission reads of a queued request (``service.batching.Job``)."""

    samples: int
    enqueued: float
    deadline: float | None
    wants_retry: bool  # its client asked for a reservation if refused
    future: asyncio.Future[Any]

    @property
    def rows(self) -> int: ...

    @property
    def units(self) -> int:
        """Compute cost in row-samples, plus ``REQUEST_UNITS``."""
        ...


class AdmissionControl:
    """The admission rules of :class:`service.batching.ModelBatcher`, over the queue state it keeps.

    A base class rather than an object of its own: every rule reads the queue (its length, its queued
    units, the running batch) at the moment of the decision, so it lives beside that state; the
    batcher module keeps the queue and the dispatcher, this one what may enter the queue and when.
    """

    name: str
    metrics: Metrics
    max_batch_size: int
    max_row_samples: int
    max_queue: int
    max_wait_s: float  # <= 0: off (count bound only)
    cost: CostEstimate
    book: RetryBook | None  # retry reservations (None or share 0: off)
    clock: Callable[[], float]
    _queue: deque[Any]
    _queued_units: int
    _running_units: int
    _running_since: float

    def estimated_wait_s(self) -> float | None:
        """Seconds a request submitted now would wait before its batch starts; None before any estimate.

        Work queued ahead times seconds per unit (:meth:`_rate`), plus what is left of the running batch.
        """
        rate = self._rate()
        if rate is None:
            return None
        return self._running_left_s(rate) + (self._queued_units + self._reserved_units()) * rate

    def _reserved_units(self) -> float:
        """Work booked by retry reservations falling due within the budget: counted as queued, so a
        client that comes back at its due time finds room (``service/reservations.py``)."""
        if self.book is None or self.max_wait_s <= 0:
            return 0.0
        return self.book.due_units(self.max_wait_s)

    def _rate(self) -> float | None:
        """Seconds per unit: the measured one, unless the running batch has overrun its estimate by more
        than the whole budget (a model that stalled or suddenly became much slower): then what that
        batch shows (elapsed / its units). Ordinary jitter of a small batch never raises it (it would be
        multiplied into the whole queue: the former rule, any overrun, refused bursts)."""
        rate = self.cost.seconds_per_unit
        if self._running_units:
            elapsed = self.clock() - self._running_since
            if elapsed > self._running_units * (rate or 0.0) + max(self.max_wait_s, 0.0):
                rate = max(rate or 0.0, elapsed / self._running_units)
        return rate

    def _running_left_s(self, rate: float) -> float:
        if not self._running_units:
            return 0.0
        return max(0.0, self._running_units * rate - (self.clock() - self._running_since))

    def max_rows(self, samples: int) -> int:
        """The most rows a merged batch at ``samples`` takes: ``max_batch_size``, and no more than
        ``max_row_samples`` row-samples (at least one row: a request is never split)."""
        return max(1, min(self.max_batch_size, self.max_row_samples // max(1, samples)))

    def batch_units(self, rows: int, samples: int) -> int:
        """The most cost units of the batch a request of ``rows`` rows at ``samples`` goes in: it takes up
        to :meth:`max_rows` rows of compatible requests queued behind it (as many requests of its size)."""
        rows = max(1, rows)
        full = max(rows, self.max_rows(samples))
        return full * samples + math.ceil(full / rows) * REQUEST_UNITS

    def estimated_answer_s(self, rows: int, samples: int) -> float | None:
        """Seconds from now until a request of ``rows`` x ``samples`` submitted now is answered: the wait
        before its batch starts plus that batch (at most full). None before any estimate."""
        rate = self._rate()
        if rate is None:
            return None
        ahead = self._queued_units + self._reserved_units() + self.batch_units(rows, samples)
        return self._running_left_s(rate) + ahead * rate

    def retry_after_s(self, answer_s: float | None = None, over_count: int = 0) -> int:
        """When a refused request would be admitted, if nothing new arrived: whole seconds, >= 1.

        ``answer_s``: the refused request's estimated time to answer; the queue drains one second of
        work per second, so after ``answer_s - budget`` it fits the budget. ``over_count``: how many
        queued requests must leave before the count bound admits one more (the time their work takes,
        plus what is left of the running batch)."""
        waits = [0.0]
        if answer_s is not None and self.max_wait_s > 0:
            waits.append(answer_s - self.max_wait_s)
        rate = self._rate()
        if over_count > 0 and rate is not None:
            ahead = sum(job.units for job in itertools.islice(self._queue, over_count))
            waits.append(self._running_left_s(rate) + ahead * rate)
        wait_s = max(waits)
        if not math.isfinite(wait_s):
            return 1
        return max(1, math.ceil(wait_s))

    def refusal(self, message: str, retry_after_s: int, units: int, claim: RetryClaim) -> QueueFull:
        """The 429 of a request the queue cannot take: with a reservation (a token and its due time as
        ``Retry-After``) when its client asked for one and the book has room, else the plain hint."""
        exc = QueueFull(message, retry_after_s=retry_after_s)
        if not claim.wants or self.book is None or not self.book.enabled:
            return exc
        if claim.early is not None:  # came back too soon: the same promise, the seconds still to wait
            exc.retry_after_s, exc.retry_token = self.book.seconds_until(claim.early), claim.early.token
            return exc
        reservation, outcome = self.book.book(retry_after_s, units, self._rate())
        self.metrics.child(self.metrics.retry_reservations, self.name, outcome.value).inc()
        if reservation is not None:
            exc.retry_after_s, exc.retry_token = self.book.seconds_until(reservation), reservation.token
        return exc

    def check_admission(self, claim: RetryClaim = NO_CLAIM) -> None:
        """Refuse (QueueFull) before the request is even read when the queued work alone already exceeds
        the budget: any request would wait at least that long, so :meth:`submit` would refuse it too, and
        refusing it here spares the body's parsing and preprocessing, which under sustained overload cost
        the same core the admitted work needs (issue #13, docs/reliability.md). The decision is
        :meth:`submit`'s, taken one body read earlier (the queue can drain a few milliseconds meanwhile),
        and only where the queue alone is over budget: whatever the request, submit would refuse it.
        A request holding a reservation due now is never refused by time.
        """
        if not self._queue or self.max_wait_s <= 0 or claim.admits:
            return
        wait_s = self.estimated_wait_s()
        if wait_s is not None and wait_s > self.max_wait_s:
            raise self.refusal(
                f"model {self.name!r}: the work already queued takes {wait_s * 1000:.0f} ms, more than "
                f"the {self.max_wait_s * 1000:.0f} ms budget",
                self.retry_after_s(wait_s),
                self._typical_units(),
                claim,
            )

    def _typical_units(self) -> int:
        """The units booked for a request refused before its body was read: the queue's mean request."""
        if self._queue:
            return max(REQUEST_UNITS, self._queued_units // len(self._queue))
        return REQUEST_UNITS

    def admit(self, rows: int, samples: int, claim: RetryClaim = NO_CLAIM) -> float:
        """Refuse (QueueFull) a request of ``rows`` x ``samples`` that the queue cannot take now: the count
        bound, or an estimated time to answer over the budget (a request finding the queue empty, or
        holding a reservation due now, is admitted). The one admission rule: the API calls it as soon as
        the body is parsed, before the request is preprocessed (under sustained overload the refused
        requests' preprocessing took half of the event loop, issue #13), and :meth:`submit` calls it
        again on the encoded batch. Returns the time of the decision (the batcher's clock), from which
        :meth:`submit` counts the request's deadline: the preprocessing in between is part of its time
        to answer."""
        units = request_units(rows, samples)
        if len(self._queue) >= self.max_queue:
            raise self.refusal(
                f"model {self.name!r}: {self.max_queue} requests already queued",
                self.retry_after_s(
                    self.estimated_answer_s(rows, samples), over_count=len(self._queue) - self.max_queue + 1
                ),
                units,
                claim,
            )
        if self._queue and self.max_wait_s > 0 and not claim.admits:
            answer_s = self.estimated_answer_s(rows, samples)
            if answer_s is not None and answer_s > self.max_wait_s:
                raise self.refusal(
                    f"model {self.name!r}: estimated time to answer {answer_s * 1000:.0f} ms exceeds "
                    f"the {self.max_wait_s * 1000:.0f} ms budget",
                    self.retry_after_s(answer_s),
                    units,
                    claim,
                )
        return self.clock()

    def _late(self, job: Queued) -> bool:
        """Refuse (QueueFull, 429 with Retry-After) a request admitted by its estimate that can no longer
        be answered by its deadline: it has waited so long that its batch would end past it.

        The admission rule applied again at dispatch, with the time already waited in place of the
        estimate. Why: the estimate is a median, and under sustained overload the queue sits at the
        budget's edge, so more than one admitted request in a hundred waited past it (issue #13: admitted
        p99 1.5 s against a 1 s budget); computing a request that is late anyway also spends the core on
        an answer its client has stopped waiting for. Triton's queue policy does the same
        (``timeout_action: REJECT``). The work it was counted for leaves the estimate with it."""
        rate = self._rate()
        if job.deadline is None or rate is None:  # callers only pass requests still waiting
            return False
        if self.clock() + self.batch_units(job.rows, job.samples) * rate <= job.deadline:
            return False
        self.metrics.child(self.metrics.queue_wait, self.name).observe(self.clock() - job.enqueued)
        job.future.set_exception(
            self.refusal(
                f"model {self.name!r}: queued past the {self.max_wait_s * 1000:.0f} ms budget",
                self.retry_after_s(self.estimated_answer_s(job.rows, job.samples)),
                job.units,
                RetryClaim(wants=job.wants_retry),
            )
        )
        return True
