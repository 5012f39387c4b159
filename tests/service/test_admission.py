"""Admission by estimated queueing delay (``LRBNN_MAX_QUEUE_WAIT_MS``), on a fake runtime and clock.

The fake runtime's compute time is set per cost unit and advances a fake clock, and a gate holds a batch
"running" for as long as a test needs: the estimates are exact numbers, nothing depends on how fast or
busy the machine is.
"""

from __future__ import annotations

import asyncio
import math
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.batching import DEFAULT_MAX_WAIT_S, REQUEST_UNITS, CostEstimate, ModelBatcher
from service.errors import ModelFailed, QueueFull
from service.monitoring.metrics import Metrics
from service.settings import Settings

pytestmark = pytest.mark.anyio

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

    def predict(
        self, x: np.ndarray, samples: int, seeds: list[int | None], block_sizes: list[int]
    ) -> dict[str, np.ndarray]:
        assert self.gate.wait(10), "the test never opened the gate"
        self.batches.append(list(block_sizes))
        self.clock.now += self.rate * (x.shape[0] * samples + REQUEST_UNITS * len(block_sizes))
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
        tasks = []
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
        self.runtime.gate.set()
        await asyncio.gather(*tasks)


@pytest.fixture
async def harness() -> Any:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        h = Harness(**kwargs)
        h.batcher.start()
        made.append(h)
        return h

    yield make
    for h in made:
        h.runtime.gate.set()
        await h.batcher.stop()


async def test_refuses_once_the_estimated_wait_exceeds_the_budget(harness: Any) -> None:
    h = harness()
    await h.run_one()  # measured: 0.1 s for 1000 units
    assert h.batcher.cost.seconds_per_unit == pytest.approx(RATE)
    running = await h.hold_running()  # 0.1 s of work left
    admitted, refused = await h.admitted_until_refused()
    # waits of the admitted: 0.1 (empty queue), 0.2, 0.3, 0.4; the next would wait 0.5 > 0.45
    assert len(admitted) == 4
    assert h.batcher.depth == 4
    assert h.batcher.estimated_wait_s() == pytest.approx(0.5)
    assert refused.retry_after_s == 1
    assert "exceeds" in refused.message
    await h.release([running, *admitted])
    assert h.batcher.depth == 0


async def test_estimates_are_freed_after_completion(harness: Any) -> None:
    h = harness()
    await h.run_one()
    running = await h.hold_running()
    admitted, _ = await h.admitted_until_refused()
    assert h.batcher._queued_units == 4 * 1000
    await h.release([running, *admitted])
    assert h.batcher._queued_units == 0
    assert h.batcher._running_units == 0
    assert h.batcher.estimated_wait_s() == 0.0
    # the same backlog is admitted again once it has drained
    running = await h.hold_running()
    again, _ = await h.admitted_until_refused()
    assert len(again) == 4
    await h.release([running, *again])


async def test_a_timed_out_request_leaves_the_estimate(harness: Any) -> None:
    h = harness()
    await h.run_one()
    running = await h.hold_running()
    x = np.zeros((1, 3), dtype=np.float32)
    from service.errors import InferenceTimeout

    with pytest.raises(InferenceTimeout):
        await h.batcher.submit(h.served, x, S, None, 0.01)
    assert h.batcher._queued_units == 0
    assert h.batcher.depth == 0
    await h.release([running])


async def test_a_lone_request_is_always_admitted(harness: Any) -> None:
    h = harness()
    await h.run_one()
    h.runtime.rate = 1.0  # the model became 10,000x slower: this batch takes 1000 fake seconds
    running = await h.hold_running()
    h.clock.now += 500.0  # half-way through it: the estimate follows the running batch at once
    assert h.batcher.estimated_wait_s() == pytest.approx(0.0)  # elapsed/units says 0.5 s/unit, 500 s left
    h.batcher.cost.seconds_per_unit = 1.0
    assert h.batcher.estimated_wait_s() == pytest.approx(500.0)
    lone = h.submit()  # far over the budget, but the queue is empty
    await asyncio.sleep(0)
    assert not lone.done() and h.batcher.depth == 1
    second, refused = await h.admitted_until_refused()
    assert second == []
    assert refused.retry_after_s == math.ceil(500.0 + 1000.0)
    await h.release([running, lone])


async def test_retry_after_grows_with_the_backlog(harness: Any) -> None:
    h = harness(max_wait_s=0.05)
    await h.run_one()
    running = await h.hold_running()
    queued = [h.submit() for _ in range(5)]  # queue empty at the first, then waits grow past the budget
    await asyncio.sleep(0)
    assert [t.done() and isinstance(t.exception(), QueueFull) for t in queued] == [False] + [True] * 4
    hints = []
    for backlog_s in (0.5, 2.5, 11.5):  # make the queued work worth that many seconds
        h.batcher.cost.seconds_per_unit = backlog_s / (1000 + 1000)  # the running batch + one queued
        _, refused = await h.admitted_until_refused()
        hints.append(refused.retry_after_s)
    assert hints == [1, 3, 12]
    await h.release([running, queued[0]])


async def test_a_running_batch_over_its_estimate_raises_the_estimate(harness: Any) -> None:
    h = harness()
    await h.run_one()
    running = await h.hold_running()
    first = h.submit()  # queue empty: admitted
    await asyncio.sleep(0)
    h.clock.now += 5.0  # the batch estimated at 0.1 s has run 5 s: 5 ms per unit, not 0.1
    assert h.batcher.estimated_wait_s() == pytest.approx(5.0)  # nothing left of it, then 1000 units
    _, refused = await h.admitted_until_refused()
    assert refused.retry_after_s == 5
    await h.release([running, first])


async def test_no_refusal_by_time_before_the_first_measurement(harness: Any) -> None:
    h = harness(max_queue=6)
    running = await h.hold_running()  # nothing measured yet, the clock stands still
    assert h.batcher.estimated_wait_s() is None
    admitted, refused = await h.admitted_until_refused()
    assert len(admitted) == 6  # only the count bound
    assert "already queued" in refused.message and refused.retry_after_s == 1
    await h.release([running, *admitted])


async def test_a_failed_batch_is_not_measured(harness: Any) -> None:
    h = harness()
    await h.run_one()
    h.runtime.rate = 100.0
    h.runtime.fail = True
    with pytest.raises(ModelFailed):
        await h.run_one()
    assert h.batcher.cost.seconds_per_unit == pytest.approx(RATE)
    assert h.batcher._running_units == 0 and h.batcher._queued_units == 0


async def test_zero_budget_is_count_bound_only(harness: Any) -> None:
    for off in (0.0, -1.0):
        h = harness(max_wait_s=off, max_queue=8)
        await h.run_one()
        h.batcher.cost.seconds_per_unit = 10.0  # every queued request "waits" hours
        running = await h.hold_running()
        admitted, refused = await h.admitted_until_refused()
        assert len(admitted) == 8
        assert "already queued" in refused.message
        assert refused.retry_after_s >= 1
        await h.release([running, *admitted])


async def test_units_count_rows_and_samples(harness: Any) -> None:
    h = harness(max_batch_size=64)
    await h.run_one()
    running = await h.hold_running()
    first = h.submit(rows=1)  # queue empty
    await asyncio.sleep(0)
    big = h.submit(rows=4)  # waits 0.1 + 0.1: admitted; then the backlog is 0.1 + 0.1 + 4 rows' worth
    await asyncio.sleep(0)
    assert not big.done()
    assert h.batcher.estimated_wait_s() == pytest.approx(RATE * (2 * 1000 + 4 * S + REQUEST_UNITS))
    _, refused = await h.admitted_until_refused()
    assert refused.retry_after_s == 1
    await h.release([running, first, big])


def test_cost_estimate_warm_up_and_ewma() -> None:
    cost = CostEstimate()
    assert cost.seconds_per_unit is None
    cost.observe(10.0, 1000)  # a cold first batch
    cost.observe(0.1, 1000)
    assert cost.seconds_per_unit == pytest.approx(1e-4)  # warm-up keeps the fastest
    cost.observe(0.2, 1000)
    cost.observe(0.1, 1000)
    assert cost.seconds_per_unit == pytest.approx(1e-4)
    cost.observe(0.6, 1000)  # past warm-up: EWMA
    assert cost.seconds_per_unit == pytest.approx(1e-4 + CostEstimate.ALPHA * 5e-4)
    for bad in (float("nan"), float("inf"), -1.0):
        cost.observe(bad, 1000)
    cost.observe(1.0, 0)
    assert cost.seconds_per_unit == pytest.approx(1e-4 + CostEstimate.ALPHA * 5e-4)


def test_setting_default_and_off() -> None:
    assert Settings().max_queue_wait_ms == 1000.0
    assert pytest.approx(1.0) == DEFAULT_MAX_WAIT_S
    assert Settings(max_queue_wait_ms=0).max_queue_wait_ms == 0.0
    assert ModelBatcher("m", Metrics(), 1, 0.0, 1).max_wait_s == DEFAULT_MAX_WAIT_S
