"""The scheduled wrk client of ``benchmarks/loadgen.py`` against a real loopback HTTP server.

The overload and soak benchmarks judge a server by what this client records, so its schedule (how many
requests, when), its retries after ``Retry-After`` and its phase bookkeeping are checked here with a
server whose answers the test controls. Timing tolerances are loose (tens of milliseconds on a 1-2 s
schedule): they hold on a loaded 2-core machine; the counts are exact.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from benchmark_modules import benchmark_module

lg = benchmark_module("loadgen")

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


class Toy:
    """What the toy server does: sleeps ``delay_s`` per request and refuses (429, ``Retry-After: 1``)
    every request received in the ``refuse_s`` seconds after its first one."""

    def __init__(self, delay_s: float = 0.0, refuse_s: float = 0.0) -> None:
        self.delay_s, self.refuse_s = delay_s, refuse_s
        self.first: float | None = None
        self.lock = threading.Lock()
        self.tokens: list[str | None] = []  # each request's Lrbnn-Retry-Token header
        self.issued = 0  # tokens handed out (tok-1, tok-2, ...) with the 429s of a request that asked


@pytest.fixture
def toy() -> Iterator[tuple[Toy, str]]:
    state = Toy()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            now = time.monotonic()
            asked = self.headers.get("Lrbnn-Retry-Token")
            with state.lock:
                if state.first is None:
                    state.first = now
                state.tokens.append(asked)
            time.sleep(state.delay_s)
            refuse = now - state.first < state.refuse_s
            body = b'{"error":"busy"}' if refuse else b'{"ok":true}'
            self.send_response(429 if refuse else 200)
            if refuse:
                self.send_header("Retry-After", "1")
                if asked == "request":
                    with state.lock:
                        state.issued += 1
                        self.send_header("Lrbnn-Retry-Token", f"tok-{state.issued}")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


BODIES = [b'{"n": 1}', b'{"n": 2}']


def test_open_loop_phases_send_exactly_their_schedule(toy, tmp_path):
    _, url = toy
    phases = [lg.Phase("a", 1.0, rps=40), lg.Phase("b", 1.0, rps=20)]
    run = lg.run_wrk_schedule(url, BODIES, phases, threads=8, timeout_s=5, tail_s=0.5, workdir=tmp_path)
    assert run.transport_errors == {}
    by_phase = [[e for e in run.events if e.phase == i] for i in range(2)]
    # thread i of 8 sends at i/rps + k*8/rps: 40 in the first second, then 20 in the next (one thread's
    # first send of phase b may still follow phase a's spacing: +-1)
    assert len(by_phase[0]) == 40
    assert abs(len(by_phase[1]) - 20) <= 1
    assert all(e.status == 200 and not e.retry for e in run.events)
    offsets = sorted(e.sent_s - run.start_s for e in by_phase[0])
    assert offsets[0] >= -0.005 and offsets[-1] < 1.0 + 0.05
    # open loop: the sends are spread at the rate, not bunched (the mean gap is 25 ms; a loaded machine
    # may delay a wrk thread's timer, never by a quarter of a second)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert max(gaps) < 0.25
    assert all(1.0 - 0.05 <= e.sent_s - run.start_s < 2.0 + 0.05 for e in by_phase[1])


def test_refused_requests_are_retried_once_after_retry_after(toy, tmp_path):
    state, url = toy
    state.refuse_s = 0.5
    phases = [lg.Phase("over", 1.0, rps=20, retry=True), lg.Phase("after", 1.0, rps=20)]
    run = lg.run_wrk_schedule(url, BODIES, phases, threads=4, timeout_s=5, tail_s=2.0, workdir=tmp_path)
    fresh = [e for e in run.events if not e.retry]
    retries = [e for e in run.events if e.retry]
    refused = [e for e in fresh if e.status == 429]
    assert refused and all(e.retry_after_s == 1.0 and e.phase == 0 for e in refused)
    # every refusal of the retrying phase is retried exactly once, a second later, and belongs to phase 0
    assert len(retries) == len(refused)
    assert all(e.phase == 0 and e.status == 200 and e.retry_after_s == 1.0 for e in retries)
    first_retry = min(e.sent_s for e in retries)
    assert first_retry - min(e.sent_s + e.seconds for e in refused) >= 1.0 - 0.01
    assert len(fresh) == 40


def test_a_reserving_phase_asks_for_reservations_and_echoes_the_tokens(toy, tmp_path):
    state, url = toy
    state.refuse_s = 0.5
    phases = [lg.Phase("over", 1.0, rps=20, retry=True, reserve=True), lg.Phase("after", 1.0, rps=20)]
    run = lg.run_wrk_schedule(url, BODIES, phases, threads=4, timeout_s=5, tail_s=2.0, workdir=tmp_path)
    refused = [e for e in run.events if not e.retry and e.status == 429]
    assert refused and state.issued == len(refused)
    # 20 fresh requests asked in the reserving phase, none in the other; each token came back once
    assert state.tokens.count("request") == 20
    assert sorted(t for t in state.tokens if t and t.startswith("tok-")) == sorted(
        f"tok-{i}" for i in range(1, state.issued + 1)
    )
    assert state.tokens.count(None) == 20


def test_a_phase_without_retry_does_not_retry(toy, tmp_path):
    state, url = toy
    state.refuse_s = 10.0
    run = lg.run_wrk_schedule(
        url, BODIES, [lg.Phase("a", 0.5, rps=20)], threads=2, timeout_s=5, tail_s=1.5, workdir=tmp_path
    )
    assert len(run.events) == 10 and all(e.status == 429 and not e.retry for e in run.events)


def test_closed_loop_sends_back_to_back_and_stops_at_the_phase_end(toy, tmp_path):
    state, url = toy
    state.delay_s = 0.05
    run = lg.run_wrk_schedule(
        url, BODIES, [lg.Phase("c", 1.0)], threads=2, timeout_s=5, tail_s=0.5, workdir=tmp_path
    )
    # two clients, 50 ms per answer: ~20 each in one second (fewer on a loaded machine, never more)
    assert 10 <= len(run.events) <= 42
    assert all(e.sent_s - run.start_s < 1.0 for e in run.events)
    assert all(e.seconds >= 0.05 for e in run.events)


def test_schedule_script_rejects_bad_phases():
    with pytest.raises(ValueError, match="at least one phase"):
        lg.wrk_schedule_script(BODIES, [], threads=1, lead_s=0.1)
    with pytest.raises(ValueError, match="positive seconds"):
        lg.wrk_schedule_script(BODIES, [lg.Phase("x", 0.0, rps=1)], threads=1, lead_s=0.1)


def test_parse_wrk_schedule_rejects_other_text():
    with pytest.raises(ValueError, match="scheduled wrk script"):
        lg.parse_wrk_schedule("Requests/sec: 100\n")
