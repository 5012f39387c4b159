"""The admission test harness: a fake runtime whose compute advances a fake clock, and a gate.

The fake runtime's compute time is set per cost unit and advances a fake clock, and a gate holds a batch
"running" for as long as a test needs: the estimates are exact numbers, nothing depends on how fast or
busy the machine is. Used by ``test_admission.py`` and ``test_reservations.py`` (the ``harness`` fixture
is registered in ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.admission import REQUEST_UNITS
from service.batching import ModelBatcher
from service.errors import QueueFull
from service.monitoring.metrics import Metrics

RATE = 1e-4  # fake seconds per cost unit
S = 1000 - REQUEST_UNITS  # one row at this S is 1000 units = 0.1 fake seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRuntime:
    """Computes nothing; each batch advances the clock by its cost, once the gate is open."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.rate = RATE
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.batches: list[list[int]] = []
        self.permits: threading.Semaphore | None = None  # when set, each batch takes one (see Harness.step)
        self.finished = 0

    def predict(
        self, x: np.ndarray, samples: int, seeds: list[int | None], block_sizes: list[int]
    ) -> dict[str, np.ndarray]:
        assert self.gate.wait(10), "the test never opened the gate"
        if self.permits is not None:
            assert self.permits.acquire(timeout=10), "the test never let this batch run"
        self.batches.append(list(block_sizes))
        self.clock.now += self.rate * (x.shape[0] * samples + REQUEST_UNITS * len(block_sizes))
        self.finished += 1
        if self.fail:
            raise RuntimeError("injected fault")
        return {"mean": x[:, :1].copy()}


class Harness:
    def __init__(self, **kwargs: Any) -> None:
        self.clock = FakeClock()
        self.runtime = FakeRuntime(self.clock)
        self.served: Any = SimpleNamespace(runtime=self.runtime)
        options = {"max_batch_size": 1, "max_delay_s": 0.0, "max_queue": 1000, "max_wait_s": 0.45} | kwargs
        self.batcher = ModelBatcher("fake", Metrics(), **options)
        self.batcher.clock = self.clock

    def submit(self, rows: int = 1, samples: int = S) -> asyncio.Task[Any]:
        x = np.zeros((rows, 3), dtype=np.float32)
        return asyncio.ensure_future(self.batcher.submit(self.served, x, samples, None, 30.0))

    async def run_one(self, rows: int = 1, samples: int = S) -> None:
        await self.submit(rows, samples)

    async def hold_running(self, rows: int = 1, samples: int = S) -> asyncio.Task[Any]:
        """Close the gate and submit one request; return once it is the running batch."""
        self.runtime.gate.clear()
        task = self.submit(rows, samples)
        for _ in range(1000):
            if self.batcher._running_units:
                return task
            await asyncio.sleep(0.001)
        raise AssertionError("the batch never started")

    async def admitted_until_refused(self, limit: int = 100) -> tuple[list[asyncio.Task[Any]], QueueFull]:
        tasks: list[asyncio.Task[Any]] = []
        for _ in range(limit):
            task = self.submit()
            await asyncio.sleep(0)  # let submit run to its admission decision
            if task.done():
                exc = task.exception()
                assert isinstance(exc, QueueFull), exc
                return tasks, exc
            tasks.append(task)
        raise AssertionError(f"{limit} requests admitted, none refused")

    async def release(self, tasks: list[asyncio.Task[Any]]) -> None:
        if self.runtime.permits is not None:
            self.runtime.permits.release(10_000)
        self.runtime.gate.set()
        await asyncio.gather(*tasks)

    async def step(self, batches: int) -> None:
        """Let ``batches`` more batches finish (permit mode), then wait until the batcher has either
        started the next one (held, no fake time elapsed) or has nothing queued."""
        assert self.runtime.permits is not None
        target = self.runtime.finished + batches
        self.runtime.permits.release(batches)
        for _ in range(10_000):
            await asyncio.sleep(0.001)
            if self.runtime.finished >= target and (self.batcher._running_units or not self.batcher.depth):
                return
        raise AssertionError("the batches never finished")


@pytest.fixture
async def harness() -> Any:
    made: list[Harness] = []

    def make(factory: type[Harness] = Harness, **kwargs: Any) -> Harness:
        h = factory(**kwargs)
        h.batcher.start()
        made.append(h)
        return h

    yield make
    for h in made:
        h.runtime.gate.set()
        await h.batcher.stop()
