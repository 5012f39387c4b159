"""The load clients of the serving benchmarks.

* an httpx closed loop and wrk (a C generator) with a Lua script that cycles through the request
  bodies; both return :class:`Samples` (latencies of the 200s, errors by kind, client CPU), which rounds
  pool exactly (``serve_load.py``, ``grpc_load.py``);
* wrk on a schedule (:func:`run_wrk_schedule`): open-loop or closed-loop phases back to back, clients
  that honour ``Retry-After``, every answer recorded with its send time (``reliability.py`` overload
  and soak).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def cycle(items: Sequence[bytes], start: int = 0) -> Iterator[bytes]:
    i = start
    while True:
        yield items[i % len(items)]
        i += 1


@dataclass
class Samples:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    def add_error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def merge(self, other: Samples) -> None:
        self.latencies_s.extend(other.latencies_s)
        self.errors += other.errors
        for k, v in other.error_kinds.items():
            self.error_kinds[k] = self.error_kinds.get(k, 0) + v
        self.elapsed_s += other.elapsed_s
        self.cpu_s += other.cpu_s
        self.server_cpu_s += other.server_cpu_s


async def closed_loop(
    client: Any, url: str, bodies: Sequence[bytes], concurrency: int, duration_s: float, max_requests: int
) -> Samples:
    """``concurrency`` workers send back to back until ``duration_s`` passed or ``max_requests`` sent;
    the in-flight requests at the deadline are waited for and counted."""
    out = Samples()
    issued = 0
    headers = {"Content-Type": "application/json"}
    start = time.perf_counter()
    cpu0 = time.process_time()
    deadline = start + duration_s

    async def worker(wid: int) -> None:
        nonlocal issued
        gen = cycle(bodies, wid * 7919)
        while time.perf_counter() < deadline and issued < max_requests:
            issued += 1
            body = next(gen)
            t0 = time.perf_counter()
            try:
                resp = await client.post(url, content=body, headers=headers)
            except Exception as exc:  # transport errors count as errors, never abort the run
                out.add_error(type(exc).__name__)
                continue
            dt = time.perf_counter() - t0
            if resp.status_code == 200:
                out.latencies_s.append(dt)
            else:
                out.add_error(f"HTTP {resp.status_code}")

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    out.elapsed_s = time.perf_counter() - start
    out.cpu_s = time.process_time() - cpu0
    return out


# -- wrk, the C load generator ----------------------------------------------------------------------
#: The Lua side of the wrk client: cycles through the request bodies (each wrk thread starts at its own
#: offset), and at the end prints the summary and the full latency histogram (wrk records every response's
#: latency in whole microseconds; ``latency(i)`` is the i-th distinct value and its count), so rounds can be
#: pooled exactly.
WRK_LUA = """
local bodies = {
%(bodies)s
}
local headers = {["Content-Type"] = "application/json"}
local asking = {["Content-Type"] = "application/json", ["Lrbnn-Retry-Token"] = "request"}
local counter = 0
local offset = 0
local threads = {}
function setup(thread)
    thread:set("offset", #threads * 7919)
    table.insert(threads, thread)
end
function request()
    counter = counter + 1
    return wrk.format("POST", nil, headers, bodies[((offset + counter) %% #bodies) + 1])
end
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK_SUMMARY %%d %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
        e.connect, e.read, e.write, e.status, e.timeout))
    local parts = {}
    for i = 1, #latency do
        local us, n = latency(i)
        table.insert(parts, us .. ":" .. n)
    end
    io.write("WRK_HISTOGRAM " .. table.concat(parts, ",") .. "\\n")
end
"""


def wrk_script(bodies: Sequence[bytes]) -> str:
    """The Lua script for ``wrk -s``: the bodies as Lua long strings (JSON never holds their delimiter)."""
    return WRK_LUA % {"bodies": ",\n".join(_lua_long_string(b) for b in bodies)}


def parse_wrk_output(text: str) -> Samples:
    """Samples from a wrk run of ``WRK_LUA``: latencies expanded from the histogram, errors by kind.

    wrk counts a non-2xx/3xx answer as a status error *and* records its latency; the errors are counted
    here, and their latencies are left in (a run with status errors is reported as having errors, so its
    percentiles are never read as all-200).
    """
    summary = hist = None
    for line in text.splitlines():
        if line.startswith("WRK_SUMMARY "):
            summary = [int(v) for v in line.split()[1:]]
        elif line.startswith("WRK_HISTOGRAM"):
            hist = line[len("WRK_HISTOGRAM") :].strip()
    if summary is None or hist is None or len(summary) != 7:
        raise ValueError(f"not the output of the wrk script: {text[-500:]!r}")
    requests, duration_us, connect, read, write, status, timeout = summary
    out = Samples(elapsed_s=duration_us / 1e6)
    for kind, n in (
        ("connect", connect),
        ("read", read),
        ("write", write),
        ("HTTP status", status),
        ("timeout", timeout),
    ):
        if n:
            out.errors += n
            out.error_kinds[kind] = n
    for item in filter(None, hist.split(",")):
        us, count = item.split(":")
        out.latencies_s.extend([int(us) / 1e6] * int(count))
    # latencies of status errors stay in the histogram; drop as many of the slowest so ok = requests - errors
    ok = max(0, requests - status)
    if len(out.latencies_s) > ok:
        out.latencies_s.sort()
        del out.latencies_s[ok:]
    return out


def run_wrk(url: str, script: Path, concurrency: int, duration_s: float, timeout_s: float) -> Samples:
    """One closed-loop wrk run: ``concurrency`` connections on one wrk thread (an epoll loop in C, a few
    percent of a core at these rates, so the servers get the machine), CPU time of wrk measured."""

    seconds = max(1, round(duration_s))
    cmd = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(concurrency),
        "-d",
        f"{seconds}s",
        "--timeout",
        f"{max(1, round(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    text, cpu_s = _wrk(cmd, timeout_s=seconds + timeout_s + 30)
    out = parse_wrk_output(text)
    out.cpu_s = cpu_s
    return out


def _wrk(cmd: list[str], timeout_s: float) -> tuple[str, float]:
    """Run one wrk command: its stdout and the CPU seconds it used (user + system)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    return proc.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# -- wrk on a schedule: open-loop phases and clients that honour Retry-After ----------------------------
@dataclass(frozen=True)
class Phase:
    """A stretch of offered load: ``rps`` requests per second over all connections (0: closed loop, each
    connection sends again as soon as it is answered); ``retry``: a request refused in this phase with
    429/503 and a ``Retry-After`` is sent once more after that many seconds (a well-behaved client);
    ``reserve``: its fresh requests ask for a retry reservation (``Lrbnn-Retry-Token: request``) and a
    retry sends back the token its refusal carried (``service/reservations.py``)."""

    name: str
    seconds: float
    rps: float = 0.0
    retry: bool = False
    reserve: bool = False


@dataclass(frozen=True)
class Event:
    """One answered request of a scheduled run. ``sent_s`` is ``time.monotonic()`` at sending (the same
    clock as the Lua side's ``clock_gettime(CLOCK_MONOTONIC)``); ``phase`` the index of the phase it
    belongs to (a retry belongs to the phase of the request that was refused); ``retry_after_s``: for a
    fresh request the ``Retry-After`` it was answered with, for a retry the one it waited."""

    sent_s: float
    seconds: float
    status: int
    phase: int
    retry: bool
    retry_after_s: float | None


@dataclass
class ScheduledRun:
    start_s: float  # time.monotonic() at which phase 0 began
    events: list[Event]
    transport_errors: dict[str, int]
    cpu_s: float = 0.0


#: The Lua side of :func:`run_wrk_schedule`. wrk keeps one Lua state per thread, and ``delay()`` is asked
#: before every request of that thread, so with one connection per thread (``-t N -c N``) each thread is one
#: client with its own send schedule and its own pending retries. A thread's fresh requests are due every
#: ``N / rps`` seconds, staggered by thread, so that the N connections together offer ``rps``; a due time is
#: never moved by a slow answer (a late request goes out at once, the schedule is kept), so the offered load
#: stays open-loop as long as an answer takes less than ``N / rps``. Every answer is recorded with its send
#: time on the monotonic clock and printed at the end, so the Python side can cut phases exactly.
WRK_SCHEDULE_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } lrbnn_timespec;
int clock_gettime(int clk_id, lrbnn_timespec *tp);
]]
local ts = ffi.new("lrbnn_timespec")
local function now()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local bodies = {
%(bodies)s
}
-- {start offset s, end offset s, rps (0: closed loop), retry refused requests (1/0), ask for and echo
-- retry reservations (1/0)}
local phases = {
%(phases)s
}
local nthreads = %(threads)d
local headers = {["Content-Type"] = "application/json"}
local asking = {["Content-Type"] = "application/json", ["Lrbnn-Retry-Token"] = "request"}
local threads = {}
start_at = now() + %(lead_s)s
function setup(thread)
    thread:set("index", #threads)
    thread:set("start_at", start_at)
    table.insert(threads, thread)
end

events = {}
local retries = {}  -- {offset s, phase, hint, token}, ascending: refused requests to send again
local cur, k = 1, 0  -- the phase of this thread's next fresh request, and its fresh requests sent in it
local sent_at, kind, phase_of, waited = 0, "f", 1, nil
local counter = 0

local function fresh_offset()
    -- seconds after start_at at which the next fresh request is due (nil: the schedule is over); the
    -- k-th request of thread i in a phase is due at start + (i + k * threads) / rps, computed from the
    -- integers so that no rounding moves a request across a phase boundary
    while cur <= #phases do
        local p = phases[cur]
        local t
        if p[3] == 0 then
            t = math.max(now() - start_at, p[1])  -- closed loop: as soon as the last one is answered
        else
            t = p[1] + (index + k * nthreads) / p[3]
        end
        if t < p[2] then return t end
        cur, k = cur + 1, 0
    end
    return nil
end

local delayed = false  -- wrk asks request() once to verify the script, before any delay(): not a send

function delay()
    delayed = true
    local t = fresh_offset()
    if retries[1] ~= nil and (t == nil or retries[1][1] < t) then t = retries[1][1] end
    if t == nil then return 3600000 end
    local ms = (t - (now() - start_at)) * 1000
    if ms <= 0 then return 0 end
    return math.ceil(ms)
end

function request()
    if not delayed then return wrk.format("POST", nil, headers, bodies[1]) end
    local f = fresh_offset()
    local r = retries[1]
    local h = headers
    if r ~= nil and (f == nil or r[1] <= f) then
        table.remove(retries, 1)
        kind, phase_of, waited = "r", r[2], r[3]
        if r[4] ~= nil then
            h = {["Content-Type"] = "application/json", ["Lrbnn-Retry-Token"] = r[4]}
        end
    else
        kind, phase_of = "f", cur
        k = k + 1
        if phases[cur] ~= nil and phases[cur][5] == 1 then h = asking end
    end
    counter = counter + 1
    sent_at = now()
    return wrk.format("POST", nil, h, bodies[((index * 7919 + counter) %% #bodies) + 1])
end

function response(status, headers, body)
    local t = now()
    local hint = headers["retry-after"] or headers["Retry-After"]
    if hint ~= nil and kind == "f" and phases[phase_of][4] == 1 and (status == 429 or status == 503) then
        local at = t - start_at + tonumber(hint)
        local token = headers["lrbnn-retry-token"] or headers["Lrbnn-Retry-Token"]
        local i = #retries + 1
        while i > 1 and retries[i - 1][1] > at do i = i - 1 end
        table.insert(retries, i, {at, phase_of, hint, token})
    end
    -- a retry records the Retry-After it waited, a fresh request the one it was given (if any)
    if kind == "r" then hint = waited end
    table.insert(events, string.format("%%.6f %%.6f %%d %%d %%s %%s", sent_at, t - sent_at, status,
        phase_of - 1, kind, hint or "-"))
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK_START %%.6f\\n", start_at))
    io.write(string.format("WRK_ERRORS %%d %%d %%d %%d %%d\\n",
        e.connect, e.read, e.write, e.status, e.timeout))
    for _, thread in ipairs(threads) do
        for _, line in ipairs(thread:get("events")) do
            io.write("WRK_EVENT ", line, "\\n")
        end
    end
end
"""


def wrk_schedule_script(bodies: Sequence[bytes], phases: Sequence[Phase], threads: int, lead_s: float) -> str:
    """The Lua script of a scheduled run (bodies as Lua long strings, phases back to back)."""
    if not phases:
        raise ValueError("a scheduled run needs at least one phase")
    if any(p.seconds <= 0 or p.rps < 0 for p in phases):
        raise ValueError(f"phases need positive seconds and rps >= 0: {phases}")
    rows, at = [], 0.0
    for p in phases:
        rows.append(f"{{{at!r}, {at + p.seconds!r}, {float(p.rps)!r}, {int(p.retry)}, {int(p.reserve)}}}")
        at += p.seconds
    return WRK_SCHEDULE_LUA % {
        "bodies": ",\n".join(_lua_long_string(b) for b in bodies),
        "phases": ",\n".join(rows),
        "threads": threads,
        "lead_s": repr(float(lead_s)),
    }


def _lua_long_string(body: bytes) -> str:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("a request body contains the Lua long-string delimiter ]==]")
    return f"[==[{text}]==]"


def parse_wrk_schedule(text: str) -> ScheduledRun:
    """The events, start time and transport errors printed by ``WRK_SCHEDULE_LUA``'s ``done()``."""
    start = None
    errors: dict[str, int] = {}
    events: list[Event] = []
    for line in text.splitlines():
        if line.startswith("WRK_EVENT "):
            sent, sec, status, phase, kind, hint = line.split()[1:]
            events.append(
                Event(
                    float(sent),
                    float(sec),
                    int(status),
                    int(phase),
                    kind == "r",
                    None if hint == "-" else float(hint),
                )
            )
        elif line.startswith("WRK_START "):
            start = float(line.split()[1])
        elif line.startswith("WRK_ERRORS "):
            # wrk's status count is its non-2xx answers, all of them events; the rest were never answered
            connect, read, write, _status, timeout = (int(v) for v in line.split()[1:])
            errors = {
                k: n
                for k, n in (("connect", connect), ("read", read), ("write", write), ("timeout", timeout))
                if n
            }
    if start is None:
        raise ValueError(f"not the output of the scheduled wrk script: {text[-500:]!r}")
    events.sort(key=lambda e: e.sent_s)
    return ScheduledRun(start, events, errors)


def run_wrk_schedule(
    url: str,
    bodies: Sequence[bytes],
    phases: Sequence[Phase],
    threads: int,
    timeout_s: float,
    tail_s: float,
    workdir: Path,
) -> ScheduledRun:
    """Offer ``phases`` back to back from ``threads`` wrk threads, one connection each; after the last phase
    wrk runs ``tail_s`` more seconds for the answers and retries still due (then stops, dropping any left)."""

    lead_s = 0.5 + threads / 1000  # every thread is connected before phase 0 starts
    script = workdir / "schedule.lua"
    script.write_text(wrk_schedule_script(bodies, phases, threads, lead_s))
    seconds = math.ceil(lead_s + sum(p.seconds for p in phases) + tail_s)
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(threads),
        "-d",
        f"{seconds}s",
        "--timeout",
        f"{max(1, round(timeout_s))}s",
    ]
    text, cpu_s = _wrk([*cmd, "-s", str(script), url], timeout_s=seconds + 60)
    run = parse_wrk_schedule(text)
    run.cpu_s = cpu_s
    return run
