"""Dynamic batching per model: queue requests, merge compatible ones into one runtime call, off the loop.

Policy: a lone request is dispatched at once (no fixed wait when nothing else is queued). When others
are already waiting, the batch takes every compatible queued request up to ``max_batch_size`` instances
and ``max_row_samples`` rows x samples (past a few MiB of activations a bigger batch costs more per
row-sample; a single request larger than that runs whole) and, if still short, waits for more while they
keep arriving (it stops after a few event-loop turns without a new one), at most until its oldest
request has been queued ``max_batch_delay_ms``. So requests that queued up while the previous batch ran
go at once, and the compute thread never idles for the delay when no more requests are coming.
Compatible = same model version and same ``samples`` (a runtime call has one S). Each request keeps its
own seed and noise block, so merging never changes an answer.

Back-pressure (the time budget, the count bound, the deadline checked at dispatch, ``Retry-After``) is
``service/admission.py``'s: :class:`ModelBatcher` applies its rules to this queue. A request that
times out (504) or whose client went away leaves the queue at once, so an abandoned request never holds
a slot nor costs compute, nor counts in the estimate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.admission import AdmissionControl, request_units
from service.aio import cancel_and_wait
from service.cost import CostEstimate
from service.errors import ClientDisconnected, InferenceTimeout, ModelFailed
from service.monitoring.metrics import Metrics
from service.repository import ServedModel
from service.reservations import NO_CLAIM, RetryBook, RetryClaim
from service.runtime.base import Outputs
from service.settings import Settings

log = logging.getLogger("lrbnn.service.batching")

DEFAULT_MAX_WAIT_S = Settings.model_fields["max_queue_wait_ms"].default / 1000.0
DEFAULT_MAX_ROW_SAMPLES: int = Settings.model_fields["max_batch_row_samples"].default


@dataclass(eq=False, repr=False)  # identity comparison; no repr of arrays and manifests, ever
class Job:
    served: ServedModel
    x: np.ndarray
    samples: int
    seed: int | None
    future: asyncio.Future[Outputs]
    enqueued: float  # on the batcher's clock
    queued: bool = True
    # by when it must be answered: its first admission (right after its body was parsed) + budget, for a
    # request admitted by its estimate; None for one admitted unconditionally (it found the queue empty,
    # or nothing was measured yet, or no budget)
    deadline: float | None = None
    wants_retry: bool = False  # its client asked for a reservation if it is refused at dispatch

    @property
    def key(self) -> tuple[int, int]:
        return (id(self.served), self.samples)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def units(self) -> int:
        """Compute cost (:func:`service.admission.request_units`)."""
        return request_units(self.rows, self.samples)


#: event-loop turns without a new request after which a batch stops waiting for more (see _collect)
QUIET_TURNS = 4


class ModelBatcher(AdmissionControl):
    """The queue and dispatcher of one model name (all its versions: batches never mix versions)."""

    def __init__(
        self,
        name: str,
        metrics: Metrics,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        max_wait_s: float | None = None,
        max_row_samples: int | None = None,
        book: RetryBook | None = None,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        # rows x samples of one merged batch (a single request may exceed it); None: the settings' default
        self.max_row_samples = DEFAULT_MAX_ROW_SAMPLES if max_row_samples is None else max_row_samples
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        # the time budget of a queued request; <= 0: off (count bound only); None: the settings' default
        self.max_wait_s = DEFAULT_MAX_WAIT_S if max_wait_s is None else max_wait_s
        self._queue: deque[Job] = deque()
        self._queued_units = 0  # sum of Job.units over self._queue
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.cost = CostEstimate()
        self.book = book  # retry reservations; None: off
        self._measured: ServedModel | None = None  # the version self.cost was measured on
        self._running_units = 0  # the batch in the executor now (0: none)
        self._running_since = 0.0
        self._chained_end: float | None = None  # the last batch's end, when requests were waiting after it
        self.clock: Callable[[], float] = time.perf_counter  # of batch times and the estimate (tests swap it)
        # one compute thread per model: batches of a model never overlap, and torch keeps its per-thread
        # state (thread pools, caches) warm instead of meeting a different pool thread each time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lrbnn-{name}")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._executor.shutdown(wait=False)
        while self._queue:
            job = self._unqueue(self._queue.popleft())
            if not job.future.done():
                job.future.cancel()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def _unqueue(self, job: Job) -> Job:
        """Book-keeping of a job that has just left ``self._queue``."""
        job.queued = False
        self._queued_units -= job.units
        return job

    async def submit(
        self,
        served: ServedModel,
        x: np.ndarray,
        samples: int,
        seed: int | None,
        timeout_s: float,
        disconnected: Callable[[], Coroutine[Any, Any, object]] | None = None,
        since: float | None = None,
        claim: RetryClaim = NO_CLAIM,
    ) -> Outputs:
        """Queue one request and wait for its answer (or QueueFull, InferenceTimeout, ClientDisconnected).

        ``since``: when the caller's :meth:`admit` admitted it (default: now); its deadline counts from
        then. ``claim``: its retry reservation; one held in time is admitted and never shed (a promise)."""
        rows = int(x.shape[0])
        self.admit(rows, samples, claim)  # again: the queue may have changed since the caller's check
        loop = asyncio.get_running_loop()
        job = Job(
            served, x, samples, seed, loop.create_future(), enqueued=self.clock(), wants_retry=claim.wants
        )
        if self._queue and self.max_wait_s > 0 and self._rate() is not None and not claim.admits:
            job.deadline = (job.enqueued if since is None else min(since, job.enqueued)) + self.max_wait_s
        if claim.early is not None and self.book is not None:  # came early, admitted anyway: promise used
            self.book.settle(claim.early)
        if claim.admits:  # a kept promise goes first: its client has already waited its Retry-After
            self._queue.appendleft(job)
        else:
            self._queue.append(job)
        self._queued_units += job.units
        self._arrived.set()
        watcher: asyncio.Task[object] | None = None
        if disconnected is not None:
            watcher = loop.create_task(disconnected())
        try:
            waiters: set[asyncio.Future[object]] = {job.future}  # type: ignore[arg-type]
            if watcher is not None:
                waiters.add(watcher)
            done, _ = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            if watcher is not None and watcher in done:
                raise ClientDisconnected(f"model {self.name!r}: the client disconnected while queued")
            raise InferenceTimeout(f"model {self.name!r}: no answer within {timeout_s:g} s")
        finally:
            if watcher is not None:
                watcher.cancel()
            if not job.future.done():
                job.future.cancel()  # the dispatcher skips it; the result of a running batch is dropped
            if job.queued:  # timed out or abandoned while waiting: free the slot now
                self._queue.remove(job)
                self._unqueue(job)

    # -- dispatcher ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            batch = await self._collect()
            if batch:
                await self._dispatch(batch)

    def _take_compatible(self, batch: list[Job], key: tuple[int, int], limit: int) -> int:
        rows = sum(j.rows for j in batch)
        for job in list(self._queue):
            if rows >= limit:
                break
            if job.key == key and not job.future.done() and rows + job.rows <= limit:
                self._queue.remove(job)
                self._unqueue(job)
                if not self._late(job):
                    batch.append(job)
                    rows += job.rows
        return rows

    async def _collect(self) -> list[Job]:
        first = self._unqueue(self._queue.popleft())
        if first.future.done() or self._late(first):
            return []
        batch, key = [first], first.key
        lone = not self._queue
        limit = self.max_rows(first.samples)
        rows = self._take_compatible(batch, key, limit)
        if lone or rows >= limit or self.max_delay_s <= 0:
            return batch
        # the delay counts from the oldest request's arrival (as Triton's max queue delay does), not from
        # now: requests that queued up while the previous batch ran have waited already, and holding the
        # idle compute thread back for them would only add a bubble to every batch under steady load
        # and it is waited only while requests keep arriving: once a few event-loop turns pass without a
        # new one (every request already received is parsed and queued by then), more waiting would only
        # idle the compute thread, e.g. when a closed-loop client's whole window is in this batch
        deadline = first.enqueued + self.max_delay_s
        quiet = 0
        while rows < limit and quiet < QUIET_TURNS and self.clock() < deadline:
            await asyncio.sleep(0)
            grown = self._take_compatible(batch, key, limit)
            quiet = 0 if grown > rows else quiet + 1
            rows = grown
        return batch

    def _compute(
        self, served: ServedModel, x: np.ndarray, samples: int, seeds: list[int | None], sizes: list[int]
    ) -> tuple[Outputs, float, float]:
        """On the compute thread: the batch and when it started and ended, timed here, so that the wait
        for the thread never counts as compute."""
        t0 = self._running_since = self.clock()
        out = served.runtime.predict(x, samples, seeds, sizes)
        return out, t0, self.clock()

    def _drain_seconds(self, started: float, ended: float) -> float:
        """How long this batch held the queue up: from the previous batch's end when it followed that
        batch back to back (requests were waiting when the dispatcher resumed), else its compute time.

        Why not the compute time alone: between two batches the event loop resumes the dispatcher only
        once it has run what was ready before it (parsing, refusing and answering other requests), and
        the queue waits meanwhile. Under a closed-loop flood of 256 connections (8 ICU rows x S = 256
        each, the server on one core) that gap was a quarter of the wall time: 19.8 s of drain for
        14.8 s of compute (issue #13, docs/reliability.md). An idle gap never counts: a batch that found
        nothing waiting when its predecessor ended starts a new busy period, timed by its compute alone."""
        chained = self._chained_end
        return ended - (chained if chained is not None and chained <= started else started)

    async def _dispatch(self, batch: list[Job]) -> None:
        live = [j for j in batch if not j.future.done()]
        if not live:
            return
        now = self.clock()
        for job in live:
            self.metrics.child(self.metrics.queue_wait, self.name).observe(now - job.enqueued)
        x = live[0].x if len(live) == 1 else np.concatenate([j.x for j in live], axis=0)
        sizes = [j.rows for j in live]
        served = live[0].served
        self.metrics.child(self.metrics.batch_size, self.name).observe(sum(sizes))
        units = sum(j.units for j in live)
        self._running_since = self.clock()  # refined by the compute thread when it starts
        self._running_units = units
        try:
            out, started, ended = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, served, x, live[0].samples, [j.seed for j in live], sizes
            )
        except Exception:  # a runtime failure answers every request of the batch (503), never hangs it
            self._chained_end = None
            log.exception("batch failed", extra={"model": self.name, "instances": sum(sizes)})
            for job in live:
                if not job.future.done():
                    job.future.set_exception(
                        ModelFailed(f"model {self.name!r} failed to compute this request", retry_after_s=1)
                    )
            return  # not measured: how fast a model fails says nothing about how fast it computes
        finally:
            self._running_units = 0
        if served is not self._measured:  # first batch, or a reloaded version: measure it afresh
            self.cost.reset()
            self._measured = served
            self._chained_end = None
        self.cost.observe(self._drain_seconds(started, ended), units)
        self._chained_end = ended if self._queue else None  # the next batch follows this one at once
        self.metrics.child(self.metrics.inference_duration, self.name).observe(ended - started)
        start = 0
        for job in live:
            stop = start + job.rows
            if not job.future.done():
                job.future.set_result({k: v[start:stop] for k, v in out.items()})
            start = stop
