"""Dynamic batching per model: queue requests, merge compatible ones into one runtime call, off the loop.

Policy: a lone request is dispatched at once (no fixed wait when nothing else is queued). When others
are already waiting, the batch takes every compatible queued request and, if still short of
``max_batch_size`` instances, waits up to ``max_batch_delay_ms`` for more. Compatible = same model
version and same ``samples`` (a runtime call has one S). Each request keeps its own seed and noise
block, so merging never changes an answer.

Back-pressure: at most ``max_queue`` requests wait per model; the next one is refused (429 with
``Retry-After``). A request that times out (504) or whose client went away leaves the queue at once, so
an abandoned request never holds a slot nor costs compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import ClientDisconnected, InferenceTimeout, ModelFailed, QueueFull
from service.monitoring.metrics import Metrics
from service.repository import ServedModel
from service.runtime.base import Outputs

log = logging.getLogger("lrbnn.service.batching")


@dataclass(eq=False, repr=False)  # identity comparison; no repr of arrays and manifests, ever
class Job:
    served: ServedModel
    x: np.ndarray
    samples: int
    seed: int | None
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True

    @property
    def key(self) -> tuple[int, int]:
        return (id(self.served), self.samples)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class ModelBatcher:
    """The queue and dispatcher of one model name (all its versions: batches never mix versions)."""

    def __init__(
        self, name: str, metrics: Metrics, max_batch_size: int, max_delay_s: float, max_queue: int
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._queue: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_batch_s = 0.01
        # one compute thread per model: batches of a model never overlap, and torch keeps its per-thread
        # state (thread pools, caches) warm instead of meeting a different pool thread each time
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lrbnn-{name}")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=False)
        while self._queue:
            job = self._queue.popleft()
            job.queued = False
            if not job.future.done():
                job.future.cancel()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def retry_after_s(self) -> int:
        """A hint for clients: roughly the time to drain the current queue."""
        return max(1, math.ceil(self._last_batch_s * max(1, len(self._queue)) / max(1, self.max_batch_size)))

    async def submit(
        self,
        served: ServedModel,
        x: np.ndarray,
        samples: int,
        seed: int | None,
        timeout_s: float,
        disconnected: Callable[[], Coroutine[Any, Any, object]] | None = None,
    ) -> Outputs:
        """Queue one request and wait for its answer (or QueueFull, InferenceTimeout, ClientDisconnected)."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(
                f"model {self.name!r}: {self.max_queue} requests already queued",
                retry_after_s=self.retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        job = Job(served, x, samples, seed, loop.create_future())
        self._queue.append(job)
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
                job.queued = False

    # -- dispatcher ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            batch = await self._collect()
            if batch:
                await self._dispatch(batch)

    def _take_compatible(self, batch: list[Job], key: tuple[int, int]) -> int:
        rows = sum(j.rows for j in batch)
        for job in list(self._queue):
            if rows >= self.max_batch_size:
                break
            if job.key == key and not job.future.done() and rows + job.rows <= self.max_batch_size:
                self._queue.remove(job)
                job.queued = False
                batch.append(job)
                rows += job.rows
        return rows

    async def _collect(self) -> list[Job]:
        first = self._queue.popleft()
        first.queued = False
        if first.future.done():
            return []
        batch, key = [first], first.key
        lone = not self._queue
        rows = self._take_compatible(batch, key)
        if lone or rows >= self.max_batch_size or self.max_delay_s <= 0:
            return batch
        deadline = time.perf_counter() + self.max_delay_s
        while rows < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
            rows = self._take_compatible(batch, key)
        return batch

    async def _dispatch(self, batch: list[Job]) -> None:
        live = [j for j in batch if not j.future.done()]
        if not live:
            return
        now = time.perf_counter()
        for job in live:
            self.metrics.queue_wait.labels(self.name).observe(now - job.enqueued)
        x = live[0].x if len(live) == 1 else np.concatenate([j.x for j in live], axis=0)
        sizes = [j.rows for j in live]
        served = live[0].served
        self.metrics.batch_size.labels(self.name).observe(sum(sizes))
        t0 = time.perf_counter()
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                self._executor, served.runtime.predict, x, live[0].samples, [j.seed for j in live], sizes
            )
        except Exception:  # a runtime failure answers every request of the batch (503), never hangs it
            log.exception("batch failed", extra={"model": self.name, "instances": sum(sizes)})
            for job in live:
                if not job.future.done():
                    job.future.set_exception(
                        ModelFailed(f"model {self.name!r} failed to compute this request", retry_after_s=1)
                    )
            return
        finally:
            self._last_batch_s = time.perf_counter() - t0
        self.metrics.inference_duration.labels(self.name).observe(self._last_batch_s)
        start = 0
        for job in live:
            stop = start + job.rows
            if not job.future.done():
                job.future.set_result({k: v[start:stop] for k, v in out.items()})
            start = stop
