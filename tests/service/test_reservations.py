"""Retry reservations (``service/reservations.py``): a refused client that asked gets a promise, kept.

The book's clock and the batcher's are fake, so every due time and every estimate is an exact number.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import toy
from admission_harness import RATE, FakeClock, Harness, S
from reservation_scenarios import PATH, held_model, until
from service_helpers import ServeApp, metric_value

from service.errors import QueueFull
from service.reservations import ASK, EARLY_S, GRACE_S, HEADER, NO_CLAIM, Outcome, RetryBook, RetryClaim

pytestmark = pytest.mark.anyio

KEY = "test-key"


def book(clock: FakeClock, share: float = 0.5, horizon_s: float = 10.0, model: str = "m") -> RetryBook:
    return RetryBook(model, KEY, share, horizon_s, clock=clock)


# -- the book alone ----------------------------------------------------------------------------------
def test_a_token_is_honoured_once_within_its_window_and_nowhere_else() -> None:
    clock = FakeClock()
    clock.now = 1000.0
    b = book(clock)
    reservation, booking = b.book(3.0, 200, 1e-3)
    assert booking is Outcome.BOOKED and reservation is not None
    assert reservation.due == pytest.approx(1003.0) and b.booked == 200
    token = reservation.token

    clock.now = reservation.due - EARLY_S - 0.01  # too soon: the same promise, not yet kept
    claim, outcome = b.claim(token)
    assert outcome is Outcome.EARLY and claim.early == reservation and not claim.admits and claim.wants
    for name, other in {
        "another model, same key": RetryBook("other", KEY, 0.5, 10.0, clock=clock),
        "another key": RetryBook("m", "another", 0.5, 10.0, clock=clock),
    }.items():
        clock.now = reservation.due
        claim, outcome = other.claim(token)
        assert outcome is Outcome.STALE and not claim.admits, name
    due_ms, units, nonce, mac = token.split(".")
    more_work, later = f"{due_ms}.{int(units) * 10}.{nonce}.{mac}", f"{int(due_ms) + 1}.{units}.{nonce}.{mac}"
    for forged in (more_work, later, "x"):
        claim, outcome = b.claim(forged)
        assert outcome is Outcome.STALE and not claim.admits and claim.wants, forged

    clock.now = reservation.due - EARLY_S + 0.01  # within half a second of its time: kept
    claim, outcome = b.claim(token)
    assert outcome is Outcome.REDEEMED and claim.held == reservation and claim.admits
    assert b.booked == 0  # its work is the queue's now
    claim, outcome = b.claim(token)  # once
    assert outcome is Outcome.STALE and not claim.admits


def test_a_settled_reservation_leaves_the_book_once() -> None:
    clock = FakeClock()
    b = book(clock)
    first, _ = b.book(1.0, 100, 1e-3)
    second, _ = b.book(1.0, 100, 1e-3)
    assert first is not None and second is not None and b.booked == 200
    b.settle(first)  # e.g. it came early and the queue had room anyway
    b.settle(first)
    assert b.booked == 100
    clock.now = first.due
    assert b.claim(first.token)[1] is Outcome.STALE  # spent
    assert b.claim(second.token)[1] is Outcome.REDEEMED and b.booked == 0


def test_another_worker_with_the_same_key_honours_a_token_it_did_not_book() -> None:
    clock = FakeClock()
    booking, other = book(clock), book(clock)  # two workers' books, one key
    reservation, _ = booking.book(1.0, 100, 1e-3)
    assert reservation is not None and other.booked == 0
    clock.now = reservation.due
    claim, outcome = other.claim(reservation.token)
    assert outcome is Outcome.REDEEMED and claim.admits and other.booked == 0


def test_a_token_presented_after_its_grace_is_stale() -> None:
    clock = FakeClock()
    b = book(clock)
    reservation, _ = b.book(1.0, 100, 1e-3)
    assert reservation is not None
    clock.now = reservation.due + GRACE_S + 0.01
    claim, outcome = b.claim(reservation.token)
    assert outcome is Outcome.STALE and not claim.admits


def test_asking_is_not_holding_and_no_header_is_no_claim() -> None:
    b = book(FakeClock())
    assert b.claim(ASK) == (RetryClaim(wants=True), None)
    assert b.claim(" Request ") == (RetryClaim(wants=True), None)
    assert b.claim(None) == (NO_CLAIM, None)
    off = book(FakeClock(), share=0.0)
    assert off.claim(ASK) == (NO_CLAIM, None)


def test_the_book_promises_at_most_its_share_of_each_second_up_to_the_horizon() -> None:
    """1 ms per unit and share 0.5: 500 units per second of due time, i.e. two bookings of 200."""
    clock = FakeClock()
    b = book(clock, horizon_s=6.0)
    waits = []
    for _ in range(9):
        reservation, outcome = b.book(2.4, 200, 1e-3)  # the queue would admit it in 2.4 s at the earliest
        waits.append(None if reservation is None else round(reservation.due - clock.now))
    assert waits == [3, 3, 4, 4, 5, 5, 6, 6, None]
    assert outcome is Outcome.FULL
    big, outcome = b.book(3.0, 5000, 1e-3)  # more than a second's share: alone in an empty second ...
    assert big is None and outcome is Outcome.FULL  # ... and every second from 3 to the horizon is taken
    big, outcome = b.book(1.0, 5000, 1e-3)
    assert big is not None and big.due - clock.now == 1.0
    assert book(clock).book(1.0, 5000, 1e-3)[1] is Outcome.BOOKED
    assert book(clock).book(1.0, 100, None) == (None, Outcome.FULL)  # nothing measured: no promise


def test_the_work_falling_due_counts_the_next_budget_and_forgets_the_past() -> None:
    clock = FakeClock()
    b = book(clock)
    for earliest in (1.0, 2.0, 5.0):
        assert b.book(earliest, 100, 1e-3)[1] is Outcome.BOOKED
    # due in the seconds [1, 2), [2, 3), [5, 6): each counts by its share inside the window
    assert b.due_units(1.0) == 0
    assert b.due_units(1.5) == pytest.approx(50)
    assert b.due_units(2.5) == pytest.approx(150)
    assert b.due_units(6.0) == pytest.approx(300)
    assert b.due_units(1e15) == pytest.approx(300)  # a budget far longer than the book: each bin once
    clock.now = 3.6  # the first two have fallen due and passed (their clients never came)
    assert b.due_units(10.0) == pytest.approx(100)
    assert b.booked == 100


# -- the book under the batcher --------------------------------------------------------------------
class BookedHarness(Harness):
    """The admission harness with a retry book on the same fake clock."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batcher.book = RetryBook("fake", KEY, 0.5, 30.0, clock=self.clock)

    def submit_with(self, claim: RetryClaim, rows: int = 1, samples: int = S) -> asyncio.Task[Any]:
        x = np.zeros((rows, 3), dtype=np.float32)
        return asyncio.ensure_future(self.batcher.submit(self.served, x, samples, None, 30.0, claim=claim))

    async def refused(self, claim: RetryClaim) -> QueueFull:
        task = self.submit_with(claim)
        await asyncio.sleep(0)
        assert task.done(), "admitted"
        exc = task.exception()
        assert isinstance(exc, QueueFull), exc
        return exc


async def test_a_client_that_asked_is_admitted_when_it_comes_back_whatever_the_queue(harness: Any) -> None:
    h = harness(BookedHarness, max_wait_s=2.5)
    h.runtime.rate = 1e-3  # one request = 1000 units = 1 fake second
    await h.run_one()
    h.runtime.permits = threading.Semaphore(0)
    running = await h.hold_running()
    h.runtime.gate.set()  # from here on the permits hold each batch
    queued, plain = await h.admitted_until_refused()  # no reservation asked
    assert plain.retry_token is None and len(queued) == 1  # 1 s left + 1 queued + 1 own = 3 s > 2.5 s
    refused = await h.refused(RetryClaim(wants=True))
    assert refused.retry_token is not None
    # the plain hint is ceil(3 - 2.5) = 1 s; the book has 500 units a second for retries: one request
    # of 1000 units alone in the first free second
    assert refused.retry_after_s == plain.retry_after_s == 1
    again = await h.refused(RetryClaim(wants=True))
    assert again.retry_after_s == 2 and again.retry_token != refused.retry_token  # the next free second
    token = refused.retry_token
    early, _ = h.batcher.book.claim(token)  # type: ignore[union-attr]
    assert (await h.refused(early)).retry_token == token  # too soon: the same promise

    await h.step(1)  # one fake second later: its due time; fresh requests filled the queue meanwhile
    fresh, _ = await h.admitted_until_refused()
    claim, outcome = h.batcher.book.claim(token)  # type: ignore[union-attr]
    assert outcome is Outcome.REDEEMED
    depth = h.batcher.depth
    kept = h.submit_with(claim)
    await asyncio.sleep(0)
    assert not kept.done() and h.batcher.depth == depth + 1, "a reservation due now was refused"
    assert h.batcher._queue[0].wants_retry, "a kept promise goes first"
    h.clock.now += 100.0  # far past any deadline: a kept promise is computed, not shed
    await h.release([running, *queued, *fresh, kept])


async def test_fresh_admission_leaves_room_for_the_work_falling_due(harness: Any) -> None:
    h = harness(BookedHarness, max_wait_s=0.45)  # 0.1 fake s per request
    await h.run_one()
    running = await h.hold_running()
    h.batcher.book = RetryBook("fake", KEY, 0.5, 30.0, clock=(wall := FakeClock()))
    reservation, _ = h.batcher.book.book(0.2, 2000, RATE)
    assert reservation is not None and reservation.due == 1.0
    # its second [1, 2) has begun: the 0.45 s of it inside the budget count, 900 units = 0.09 fake s
    wall.now = 1.0
    admitted, _ = await h.admitted_until_refused()
    assert len(admitted) == 2  # three without it (test_admission): 0.29, 0.39, then 0.49 s > 0.45
    wall.now = 100.0  # its due time long past
    more, _ = await h.admitted_until_refused()
    assert len(more) == 1
    await h.release([running, *admitted, *more])


async def test_a_request_shed_at_dispatch_gets_a_reservation_if_it_asked(harness: Any) -> None:
    h = harness(BookedHarness)  # budget 0.45 fake s, 0.1 s per request
    await h.run_one()
    running = await h.hold_running()
    lone = h.submit_with(RetryClaim(wants=True))  # the queue was empty: admitted unconditionally
    await asyncio.sleep(0)
    asked, plain = h.submit_with(RetryClaim(wants=True)), h.submit()
    await asyncio.sleep(0)
    h.clock.now += 0.3  # the running batch overruns: both queued requests are now late
    await h.release([running, lone])
    with pytest.raises(QueueFull, match="queued past") as shed:
        await asked
    assert shed.value.retry_token is not None
    with pytest.raises(QueueFull, match="queued past") as shed_plain:
        await plain
    assert shed_plain.value.retry_token is None


# -- over HTTP and gRPC ----------------------------------------------------------------------------


async def test_the_token_travels_in_the_header_of_a_429_and_of_the_retry(
    serve_app: ServeApp, tmp_path: Path
) -> None:
    """The whole path through the app: header read, 429 header, early refusal, redemption, metrics."""
    body = {"instances": [toy.instance()]}
    async with serve_app(max_queue_wait_ms=1000.0, state_dir=tmp_path) as client:
        async with held_model(client) as (batcher, gate):
            plain = await client.post(PATH, json=body)
            assert plain.status_code == 429 and "retry-after" in plain.headers
            assert HEADER.lower() not in plain.headers
            asked = await client.post(PATH, json=body, headers={HEADER: ASK})
            assert asked.status_code == 429
            token = asked.headers[HEADER]
            due = batcher.book._read(token).due
            assert int(asked.headers["retry-after"]) >= 1
            early = await client.post(PATH, json=body, headers={HEADER: token})
            assert early.status_code == 429 and early.headers[HEADER] == token
            stale = await client.post(PATH, json=body, headers={HEADER: "not-a-token"})
            assert stale.status_code == 429 and HEADER.lower() in stale.headers  # a new promise, no error
            batcher.book.clock = lambda: due  # its due time
            kept = asyncio.ensure_future(client.post(PATH, json=body, headers={HEADER: token}))
            await until(lambda: batcher.depth == 2)  # admitted over the budget
            gate.set()
            assert (await kept).status_code == 200
        metrics = (await client.get("/metrics")).text
        counts = {
            o.value: metric_value(metrics, "lrbnn_retry_reservations_total", model="toy", outcome=o.value)
            for o in Outcome
        }
        assert counts == {"booked": 2, "full": 0, "redeemed": 1, "early": 1, "stale": 1}


def test_the_token_travels_in_grpc_metadata(repo: Path, tmp_path: Path) -> None:
    """gRPC: asked for in the invocation metadata, the token comes back in the trailing metadata of
    RESOURCE_EXHAUSTED, and sent back it admits the call over the budget. In a process of its own: the
    server's OIP descriptors clash with tritonclient's, which other tests load into this one."""
    import subprocess
    import sys

    script = Path(__file__).with_name("reservation_scenarios.py")
    done = subprocess.run(
        [sys.executable, str(script), "grpc", str(repo), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "grpc reservation kept" in done.stdout


async def test_the_openapi_document_names_the_headers_of_a_refusal(serve_app: ServeApp) -> None:
    async with serve_app() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/v1/models/toy:predict", "/v2/models/toy/infer"):
        refused = paths[path]["post"]["responses"]
        assert set(refused["429"]["headers"]) == {"Retry-After", HEADER}, path
        assert set(refused["503"]["headers"]) == {"Retry-After"}, path
