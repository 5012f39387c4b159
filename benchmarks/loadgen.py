"""The load clients of the serving benchmarks: an httpx closed loop and wrk (a C generator) driven by a
Lua script that cycles through the request bodies; both return :class:`Samples` (latencies of the 200s,
errors by kind, client CPU), which rounds pool exactly."""

from __future__ import annotations

import asyncio
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
    quoted = []
    for b in bodies:
        text = b.decode()
        if "]==]" in text:
            raise ValueError("a request body contains the Lua long-string delimiter ]==]")
        quoted.append(f"[==[{text}]==]")
    return WRK_LUA % {"bodies": ",\n".join(quoted)}


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
    import resource

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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    out = parse_wrk_output(proc.stdout)
    out.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out
