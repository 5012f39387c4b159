"""Admission by estimated queueing delay (``LRBNN_MAX_QUEUE_WAIT_MS``), on a fake runtime and clock.

The fake runtime's compute time is set per cost unit and advances a fake clock, and a gate holds a batch
"running" for as long as a test needs: the estimates are exact numbers, nothing depends on how fast or
busy the machine is (``admission_harness.py``).
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import numpy as np
import pytest
from admission_harness import RATE, S

from service.admission import REQUEST_UNITS
from service.batching import DEFAULT_MAX_WAIT_S, ModelBatcher
from service.cost import CostEstimate
from service.errors import ModelFailed, QueueFull
from service.monitoring.metrics import Metrics
from service.settings import Settings

pytestmark = pytest.mark.anyio


async def test_refuses_once_the_estimated_time_to_answer_exceeds_the_budget(harness: Any) -> None:
    h = harness()
    await h.run_one()  # measured: 0.1 s for 1000 units
    assert h.batcher.cost.seconds_per_unit == pytest.approx(RATE)
    running = await h.hold_running()  # 0.1 s of work left
    admitted, refused = await h.admitted_until_refused()
    # time to answer of the admitted (running batch + queue ahead + its own batch of one request):
    # 0.2 (queue empty), 0.3, 0.4; the next would be answered after 0.5 > 0.45
    assert len(admitted) == 3
    assert h.batcher.depth == 3
    assert h.batcher.estimated_wait_s() == pytest.approx(0.4)
    assert h.batcher.estimated_answer_s(1, S) == pytest.approx(0.5)
    assert refused.retry_after_s == 1
    assert "exceeds" in refused.message
    await h.release([running, *admitted])
    assert h.batcher.depth == 0


async def test_estimates_are_freed_after_completion(harness: Any) -> None:
    h = harness()
    await h.run_one()
    running = await h.hold_running()
    admitted, _ = await h.admitted_until_refused()
    assert h.batcher._queued_units == 3 * 1000
    await h.release([running, *admitted])
    assert h.batcher._queued_units == 0
    assert h.batcher._running_units == 0
    assert h.batcher.estimated_wait_s() == 0.0
    # the same backlog is admitted again once it has drained
    running = await h.hold_running()
    again, _ = await h.admitted_until_refused()
    assert len(again) == 3
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
    h.clock.now += 500.0  # half-way through it, far over its estimate: the stall rule sees it at once
    assert h.batcher.estimated_wait_s() == pytest.approx(0.0)  # elapsed/units says 0.5 s/unit, 500 s left
    h.batcher.cost.seconds_per_unit = 1.0
    assert h.batcher.estimated_wait_s() == pytest.approx(500.0)
    lone = h.submit()  # far over the budget, but the queue is empty
    await asyncio.sleep(0)
    assert not lone.done() and h.batcher.depth == 1
    second, refused = await h.admitted_until_refused()
    assert second == []
    # answered after 500 (running) + 1000 (queued) + 1000 (its own batch): fits the budget 2500 s from now
    assert refused.retry_after_s == math.ceil(500.0 + 1000.0 + 1000.0 - 0.45)
    await h.release([running, lone])


async def test_retry_after_is_when_the_refused_request_would_be_admitted(harness: Any) -> None:
    """Honest Retry-After: a client that waits that long is admitted, and one second less is not enough.

    Requests of 1 fake second each; the budget is lowered after a backlog of 10 has been admitted."""
    h = harness(max_wait_s=100.0)
    h.runtime.rate = 1e-3  # one row at S = 1000 units = 1 fake second
    await h.run_one()
    h.runtime.permits = threading.Semaphore(0)
    running = await h.hold_running()
    h.runtime.gate.set()  # from here on the permits hold each batch
    queued = [h.submit() for _ in range(10)]
    await asyncio.sleep(0)
    assert h.batcher.depth == 10
    h.batcher.max_wait_s = 2.5
    _, refused = await h.admitted_until_refused()
    # 1 s left of the running batch + 10 s queued + 1 s its own: 12 s to answer, 2.5 s allowed
    assert refused.retry_after_s == math.ceil(12.0 - 2.5) == 10
    refused_at = h.clock.now
    await h.step(9)  # nine seconds of work done: one second too early
    assert h.clock.now == pytest.approx(refused_at + refused.retry_after_s - 1)
    early, again = await h.admitted_until_refused()
    assert early == [] and again.retry_after_s == 1
    await h.step(1)  # Retry-After seconds later
    assert h.clock.now == pytest.approx(refused_at + refused.retry_after_s)
    retried = h.submit()
    await asyncio.sleep(0)
    assert not retried.done(), "a client that waited Retry-After was refused"
    await h.release([running, *queued, retried])


async def test_retry_after_of_the_count_bound_waits_for_free_slots(harness: Any) -> None:
    h = harness(max_wait_s=0.0, max_queue=3)
    h.runtime.rate = 1e-3  # 1 fake second per request
    await h.run_one()
    running = await h.hold_running()
    queued = [h.submit() for _ in range(3)]
    await asyncio.sleep(0)
    _, refused = await h.admitted_until_refused()
    assert "already queued" in refused.message
    assert refused.retry_after_s == 2  # the running batch (1 s) and the oldest queued one (1 s) must go
    await h.release([running, *queued])


async def test_jitter_of_a_small_running_batch_does_not_inflate_the_estimate(harness: Any) -> None:
    """The burst defect: the first request runs alone while the rest arrive; its elapsed time, a little
    over its tiny estimate (the event loop parses the burst beside it), must not be multiplied into the
    whole queue."""
    h = harness(max_batch_size=8, max_wait_s=1.0)
    small = 100  # 228 units = 22.8 fake ms per request
    await h.run_one(samples=small)
    running = await h.hold_running(samples=small)
    h.clock.now += 0.05  # 2x its estimate, but far less than the budget over it
    burst = [h.submit(samples=small) for _ in range(30)]
    await asyncio.sleep(0)
    # the last one is answered after 29 * 22.8 ms queued ahead + its batch of 8 (182 ms): 0.84 s
    assert not any(t.done() for t in burst), "a burst whose work fits the budget was refused"
    assert h.batcher.estimated_wait_s() == pytest.approx(30 * (small + REQUEST_UNITS) * RATE)
    await h.release([running, *burst])


async def test_a_slow_batch_after_idle_does_not_refuse_the_next_burst(harness: Any) -> None:
    h = harness(max_batch_size=8, max_wait_s=1.0)
    small = 100
    for _ in range(5):
        await h.run_one(samples=small)
    h.clock.now += 3600.0  # an hour idle: nothing learns from it
    h.runtime.rate = 5 * RATE  # the first batch after the pause is cold
    await h.run_one(samples=small)
    h.runtime.rate = RATE
    assert h.batcher.cost.seconds_per_unit == pytest.approx(RATE)
    running = await h.hold_running(samples=small)
    burst = [h.submit(samples=small) for _ in range(30)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in burst), "a burst whose work fits the budget was refused"
    await h.release([running, *burst])


async def test_the_loop_delay_between_back_to_back_batches_counts_and_idle_time_does_not(
    harness: Any,
) -> None:
    """Under load the event loop resumes the dispatcher late (it is parsing and answering others): that
    delay is part of how fast the queue drains (a quarter of the wall time under a closed-loop flood,
    issue #13); before, only compute time counted."""
    h = harness(max_wait_s=10.0)
    gap = 0.05  # fake seconds the loop takes to come back to the dispatcher, before every batch
    collect = h.batcher._collect

    async def late_collect() -> list[Any]:
        h.clock.now += gap
        return await collect()

    h.batcher._collect = late_collect  # type: ignore[method-assign]
    running = await h.hold_running()  # found the queue empty: timed by its compute alone
    queued = [h.submit() for _ in range(2)]
    await asyncio.sleep(0)
    await h.release([running, *queued])
    # the two queued batches each held the queue up for the gap plus their 0.1 s compute
    assert list(h.batcher.cost.rates) == pytest.approx([RATE, 1.5 * RATE, 1.5 * RATE])
    h.clock.now += 3600.0  # idle: the next batch starts a new busy period
    await h.run_one()
    assert list(h.batcher.cost.rates) == pytest.approx([RATE, 1.5 * RATE, 1.5 * RATE, RATE])


async def test_a_request_that_waited_past_its_deadline_is_refused_not_computed(harness: Any) -> None:
    """Admission by estimate gives a request a deadline (arrival + budget); one that can no longer be
    answered by then is refused at dispatch with 429 and Retry-After instead of being computed late. A
    request admitted because it found the queue empty has no deadline and is always computed."""
    h = harness()  # budget 0.45 fake s, 0.1 s per request
    await h.run_one()
    running = await h.hold_running()
    lone = h.submit()  # the queue was empty: admitted unconditionally
    await asyncio.sleep(0)
    queued = h.submit()  # estimated 0.1 + 0.1 + 0.1 s <= 0.45: admitted, deadline in 0.45 s
    await asyncio.sleep(0)
    assert not queued.done()
    h.clock.now += 0.3  # the running batch overruns (by less than a stall): the queue falls behind
    await h.release([running, lone])
    with pytest.raises(QueueFull, match="queued past the 450 ms budget") as refused:
        await queued
    assert refused.value.retry_after_s == 1
    assert len(h.runtime.batches) == 3  # the measuring one, the running one and the lone one: not it
    assert h.batcher.depth == 0 and h.batcher._queued_units == 0


async def test_the_deadline_counts_from_the_first_admission(harness: Any) -> None:
    """The time between the API's admit (right after the body is parsed) and submit (after the
    preprocessing) is part of the request's time to answer."""
    h = harness()  # budget 0.45 fake s, 0.1 s per request
    await h.run_one()
    running = await h.hold_running()
    lone = h.submit()
    await asyncio.sleep(0)
    admitted = h.batcher.admit(1, S)
    assert admitted == h.clock.now
    h.clock.now += 0.2  # preprocessing took long
    x = np.zeros((1, 3), dtype=np.float32)
    late = asyncio.ensure_future(h.batcher.submit(h.served, x, S, None, 30.0, since=admitted))
    await asyncio.sleep(0)
    assert not late.done()  # admitted: 0.1 left of the running batch + 0.1 + 0.1 <= 0.45
    h.clock.now += 0.1  # from its admission: 0.3 waited + 0.1 running + 0.1 lone + 0.1 own > 0.45
    await h.release([running, lone])
    with pytest.raises(QueueFull, match="queued past"):
        await late


async def test_a_batch_stops_growing_at_max_row_samples_and_never_splits_a_request(harness: Any) -> None:
    h = harness(max_batch_size=8, max_row_samples=2 * S, max_wait_s=100.0)
    assert h.batcher.max_rows(S) == 2 and h.batcher.max_rows(1) == 8  # max_batch_size still bounds rows
    assert h.batcher.batch_units(1, S) == 2 * S + 2 * REQUEST_UNITS  # the estimate's own batch follows it
    running = await h.hold_running()
    queued = [h.submit() for _ in range(5)] + [h.submit(rows=3)]
    await asyncio.sleep(0)
    await h.release([running, *queued])
    assert h.runtime.batches == [[1], [1, 1], [1, 1], [1], [3]]  # the 3-row request alone, whole


async def test_a_stalled_batch_raises_the_estimate(harness: Any) -> None:
    h = harness()
    await h.run_one()
    running = await h.hold_running()
    first = h.submit()  # queue empty: admitted
    await asyncio.sleep(0)
    h.clock.now += 0.3  # over its 0.1 s estimate, but by less than the budget: jitter, not a stall
    assert h.batcher.estimated_wait_s() == pytest.approx(1000 * RATE)
    h.clock.now += 4.7  # the batch estimated at 0.1 s has run 5 s: 5 ms per unit, not 0.1
    assert h.batcher.estimated_wait_s() == pytest.approx(5.0)  # nothing left of it, then 1000 units
    _, refused = await h.admitted_until_refused()
    assert refused.retry_after_s == math.ceil(5.0 + 5.0 - 0.45)  # the queued one, then its own
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
    h = harness(max_batch_size=4, max_wait_s=1.0)
    await h.run_one()
    running = await h.hold_running()
    first = h.submit(rows=1)  # queue empty
    await asyncio.sleep(0)
    big = h.submit(rows=4)  # answered after 0.1 + 0.1 + its batch (4 rows, one request): 0.56 s
    await asyncio.sleep(0)
    assert not big.done()
    assert h.batcher.estimated_wait_s() == pytest.approx(RATE * (2 * 1000 + 4 * S + REQUEST_UNITS))
    # a one-row request's batch may hold 4 one-row requests: 4 * (S + 128) units
    assert h.batcher.batch_units(1, S) == 4 * (S + REQUEST_UNITS)
    assert h.batcher.batch_units(4, S) == 4 * S + REQUEST_UNITS
    assert h.batcher.batch_units(10, S) == 10 * S + REQUEST_UNITS  # larger than a batch: alone
    assert h.batcher.estimated_answer_s(1, S) == pytest.approx(
        RATE * (2 * 1000 + 4 * S + REQUEST_UNITS + 4 * (S + REQUEST_UNITS))
    )
    await h.release([running, first, big])


def test_cost_estimate_ignores_a_cold_first_batch_and_outliers() -> None:
    cost = CostEstimate()
    assert cost.seconds_per_unit is None
    cost.observe(10.0, 1000)  # a cold first batch
    assert cost.seconds_per_unit == pytest.approx(1e-2)  # nothing better known yet
    cost.observe(0.1, 1000)
    assert cost.seconds_per_unit == pytest.approx(1e-4)  # fewer than three: the fastest
    for _ in range(3):
        cost.observe(0.1, 1000)
    assert cost.seconds_per_unit == pytest.approx(1e-4)  # median: the cold one is outvoted
    cost.observe(0.5, 1000)  # one slow batch (after idle, a busy moment)
    assert cost.seconds_per_unit == pytest.approx(1e-4)
    for bad in (float("nan"), float("inf"), -1.0):
        cost.observe(bad, 1000)
    cost.observe(1.0, 0)
    assert cost.count == 6 and cost.seconds_per_unit == pytest.approx(1e-4)


def test_cost_estimate_follows_a_lasting_change() -> None:
    cost = CostEstimate()
    for _ in range(CostEstimate.WINDOW):
        cost.observe(0.1, 1000)
    for i in range(CostEstimate.WINDOW // 2 + 1):
        assert cost.seconds_per_unit == pytest.approx(1e-4), i
        cost.observe(0.6, 1000)  # the model became 6x slower, for good
    assert cost.seconds_per_unit == pytest.approx(6e-4)
    cost.reset()
    assert cost.seconds_per_unit is None and cost.count == 0


def test_setting_default_and_off() -> None:
    assert Settings().max_queue_wait_ms == 1000.0
    assert Settings().max_queue >= 1000  # a memory safety limit: a burst of 1,000 is bounded by work
    assert pytest.approx(1.0) == DEFAULT_MAX_WAIT_S
    assert Settings(max_queue_wait_ms=0).max_queue_wait_ms == 0.0
    assert ModelBatcher("m", Metrics(), 1, 0.0, 1).max_wait_s == DEFAULT_MAX_WAIT_S


async def test_early_check_refuses_only_what_submit_would_refuse(harness: Any) -> None:
    """``check_admission`` runs before the body is read: it refuses when the queued work alone is over
    the budget (then submit would refuse any request too), and lets submit decide otherwise."""
    h = harness()
    h.batcher.check_admission()  # nothing measured, nothing queued
    await h.run_one()
    running = await h.hold_running()
    admitted, _ = await h.admitted_until_refused()
    assert h.batcher.estimated_wait_s() == pytest.approx(0.4)  # under the 0.45 budget
    h.batcher.check_admission()  # the wait fits: submit decides (it refuses: 0.5 s to answer)
    h.batcher.max_wait_s = 0.35
    with pytest.raises(QueueFull, match="already queued takes 400 ms") as info:
        h.batcher.check_admission()
    assert info.value.retry_after_s == 1
    _, refused = await h.admitted_until_refused()  # submit agrees
    assert refused.retry_after_s >= info.value.retry_after_s
    h.batcher.max_wait_s = 0.0  # budget off: count bound only, never refused early
    h.batcher.check_admission()
    await h.release([running, *admitted])
    h.batcher.max_wait_s = 0.35
    h.batcher.check_admission()  # drained
