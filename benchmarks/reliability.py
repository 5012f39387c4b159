"""Reliability benchmarks of the model server (not run in CI; numbers go into ``docs/reliability.md``).

    .venv/bin/python benchmarks/reliability.py fuzz --cases 5000        # schemathesis, every check
    .venv/bin/python benchmarks/reliability.py overload --seconds 60    # 2x saturation, then recovery
    .venv/bin/python benchmarks/reliability.py soak --seconds 1800      # 50 % of saturation
    .venv/bin/python benchmarks/reliability.py burst                    # 10/50/200/1000 requests at once
    .venv/bin/python benchmarks/reliability.py audit                    # pip-audit of the installed set
    .venv/bin/python benchmarks/reliability.py audit-latest             # PyPI project JSON (see below)

``overload`` and ``soak`` start ``lrbnn serve`` on a free loopback port over the bundled model repository
(``deploy/models``, or ``--model-repository``) and drive it with wrk (``loadgen.run_wrk_schedule``: one
connection per wrk thread, each on its own send schedule): requests are sent on a fixed schedule whatever
the answers, as real clients do, so an overloaded server cannot slow the offered load down, and a C load
generator costs the machine a few percent of a core where the former asyncio client saturated a core of
its own before the server did (session 6). Each prints one JSON object (also written to ``--out``).

``overload`` reports the unloaded p99, the admitted p99 under 2x load and their ratio, the 429/503
counts (and any without ``Retry-After``), the most requests in flight (the server's
``lrbnn_inflight_requests`` gauge: queued + running + being parsed, an upper bound of the queue depth),
RSS after warm-up, at its peak and after the overload, and how soon the service recovered once the load
dropped (``recovered_after_s``, :func:`recovered_after`: the start of the first 0.5 s bin of the recovery
phase from which on every bin is healthy, i.e. every request sent in it answered 200 and the bin's p90
within 2x the unloaded p99; a single slow request, which any p99 allows for one in a hundred, does not
count as not recovered: ``last_outlier_s`` still reports the latest one). ``soak`` reports, per ``--window``,
p50/p90/p99/max latency, the answer codes, errors, in-flight peak and RSS (start, peak, end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (Path(__file__).resolve().parent, ROOT):  # the sibling stats module; service from a checkout
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import httpx  # noqa: E402
from loadgen import Phase, ScheduledRun, run_wrk_schedule  # noqa: E402
from stats import percentile  # noqa: E402

from service.testing import ServerProcess  # noqa: E402

DEFAULT_REPO = ROOT / "deploy" / "models"


def machine() -> dict[str, Any]:
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


RECOVERY_BIN_S = 0.5


def unhealthy_bins(
    events: list[tuple[float, str, float]], slow_s: float, bin_s: float = RECOVERY_BIN_S
) -> list[dict[str, Any]]:
    """The bins :func:`recovered_after` counts as unhealthy, each with its start, request count, answers
    other than 200 and p90 (ms): what kept a run from recovering, for the report."""
    bins: dict[int, list[tuple[str, float]]] = {}
    for t, code, sec in events:
        bins.setdefault(int(t // bin_s), []).append((code, sec))
    out = []
    for k in sorted(bins):
        got = bins[k]
        p90 = percentile([sec for _, sec in got], 90)
        not_ok = sum(code != "200" for code, _ in got)
        if not_ok or p90 > slow_s:
            out.append(
                {"start_s": k * bin_s, "requests": len(got), "not_200": not_ok, "p90_ms": _r(1000 * p90)}
            )
    return out


def recovered_after(
    events: list[tuple[float, str, float]], slow_s: float, bin_s: float = RECOVERY_BIN_S
) -> float:
    """Seconds into the phase until the service is healthy for good (0.0: healthy from the start).

    ``events`` are (sent at, code, seconds) of one phase. Requests are binned by send time; a bin is
    healthy when all its requests were answered 200 and its p90 latency is at most ``slow_s``. The
    answer is the start of the first bin after the last unhealthy one (the phase length if the last bin
    is unhealthy; an empty bin counts as healthy).
    """
    bad = unhealthy_bins(events, slow_s, bin_s)
    return bad[-1]["start_s"] + bin_s if bad else 0.0


# -- load generation -----------------------------------------------------------------------------------
@dataclass
class Window:
    """What one phase of offered load saw."""

    name: str
    offered_rps: float
    seconds: float
    latencies_ok: list[float] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    retry_after_missing: int = 0
    errors: int = 0  # transport errors and 5xx other than the documented 503 refusals
    max_inflight: float = 0.0
    rss_start: int = 0
    rss_end: int = 0
    rss_max: int = 0
    events: list[tuple[float, str, float]] = field(default_factory=list)  # (sent at, code, seconds)
    load_end: float = 0.0  # the machine's 1-minute load average when the window ended
    retry: bool = False  # retry each refused request once, after its Retry-After
    retries: list[tuple[float, float, str]] = field(default_factory=list)  # (hint s, sent at, code)
    retry_latencies_ok: list[float] = field(default_factory=list)
    transport_errors: dict[str, int] = field(default_factory=dict)  # wrk's, by kind (never answered)

    def summary(self) -> dict[str, Any]:
        sent = sum(self.codes.values())
        ok = self.codes.get("200", 0)
        ms = [v * 1000 for v in self.latencies_ok]
        return {
            "phase": self.name,
            "offered_rps": round(self.offered_rps, 2),
            "seconds": self.seconds,
            "sent": sent,
            "codes": dict(sorted(self.codes.items())),
            "goodput_rps": round(ok / self.seconds, 2),
            "admitted_p50_ms": _r(percentile(ms, 50)),
            "admitted_p90_ms": _r(percentile(ms, 90)),
            "admitted_p99_ms": _r(percentile(ms, 99)),
            "admitted_max_ms": _r(max(ms) if ms else None),
            "refusals_without_retry_after": self.retry_after_missing,
            "errors": self.errors,
            "transport_errors": self.transport_errors,
            "max_inflight_seen": self.max_inflight,
            "rss_mb_start": round(self.rss_start / 2**20, 1),
            "rss_mb_max": round(max(self.rss_max, self.rss_end) / 2**20, 1),
            "rss_mb_end": round(self.rss_end / 2**20, 1),
            "load_average_end": round(self.load_end, 2),
            **({"retries": retry_summary(self.retries, self.seconds)} if self.retry else {}),
        }


def retry_summary(retries: list[tuple[float, float, str]], seconds: float) -> dict[str, Any]:
    """Of the refused clients that retried once after Retry-After: how many were admitted, split by
    whether the retry was sent while the phase's load still ran or after it ended."""
    during = [code for _, t, code in retries if t < seconds]
    after = [code for _, t, code in retries if t >= seconds]
    hints: dict[str, int] = {}
    for hint, _, _ in retries:
        hints[f"{hint:g}"] = hints.get(f"{hint:g}", 0) + 1
    return {
        "retried": len(retries),
        "admitted": sum(code == "200" for _, _, code in retries),
        "admitted_fraction": _frac(sum(code == "200" for _, _, code in retries), len(retries)),
        "retried_during_load": len(during),
        "admitted_during_load": during.count("200"),
        "retried_after_load": len(after),
        "admitted_after_load": after.count("200"),
        "retry_after_hints_s": dict(sorted(hints.items(), key=lambda kv: float(kv[0]))),
    }


def _frac(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _or0(v: float) -> float:
    return 0.0 if math.isnan(v) else v


def _r(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 2)


class Sampler:
    """Polls the server's in-flight gauge and RSS every ``every_s`` while a wrk run lasts (a thread: the
    load itself comes from wrk, so this process only sleeps and scrapes)."""

    def __init__(self, srv: ServerProcess, model: str, every_s: float = 1.0) -> None:
        self.srv, self.every_s = srv, every_s
        self.series = f'lrbnn_inflight_requests{{model="{model}"}}'
        self.samples: list[tuple[float, float, int]] = []  # (time.monotonic(), in flight, RSS bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            inflight = self.srv.metric(self.series) or 0.0
            self.samples.append((time.monotonic(), inflight, self.srv.rss_bytes()))
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Load:
    """A server under test and the request every benchmark client sends to it."""

    srv: ServerProcess
    model: str
    payload: bytes
    workdir: Path
    timeout_s: float = 60.0
    sample_every_s: float = 1.0  # the in-flight gauge and RSS poll (a /metrics scrape each time)
    server_view: dict[str, float | None] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.srv.url}/v1/models/{self.model}:predict"

    def run(self, phases: list[Phase], threads: int, tail_s: float = 0.0) -> list[Window]:
        """Offer ``phases`` from ``threads`` wrk connections; one :class:`Window` per phase. wrk's
        transport errors (never answered) are counted in the last window. ``self.server_view``: the
        server's own histograms over the run (time inside the server vs the client's latency)."""
        before = self.srv.metrics_text()
        with Sampler(self.srv, self.model, self.sample_every_s) as sampler:
            run = run_wrk_schedule(
                self.url, [self.payload], phases, threads, self.timeout_s, tail_s, self.workdir
            )
        after = self.srv.metrics_text()
        self.server_view = {}
        for key, name, labels in (
            (
                "request_duration_200",
                "lrbnn_request_duration_seconds",
                {"endpoint": "v1_predict", "code": "200"},
            ),
            ("queue_wait", "lrbnn_queue_wait_seconds", {}),
            ("inference_duration", "lrbnn_inference_duration_seconds", {}),
        ):
            b, a = bucket_counts(before, name, labels), bucket_counts(after, name, labels)
            for q in (50, 99):
                value = histogram_quantile(q / 100, b, a)
                self.server_view[f"{key}_p{q}_ms"] = None if value is None else round(1000 * value, 1)
            # the mean, from _sum and _count: a queue drains at the mean batch time, not the median
            count, total = (
                sample_value(after, f"{name}_{part}", labels) - sample_value(before, f"{name}_{part}", labels)
                for part in ("count", "sum")
            )
            self.server_view[f"{key}_mean_ms"] = round(1000 * total / count, 1) if count else None
            self.server_view[f"{key}_count"] = int(count)
        for outcome in ("booked", "full", "redeemed", "early", "stale"):  # retry reservations
            labels = {"model": self.model, "outcome": outcome}
            name = "lrbnn_retry_reservations_total"
            self.server_view[f"reservations_{outcome}"] = int(
                sample_value(after, name, labels) - sample_value(before, name, labels)
            )
        out = windows(run, phases, sampler.samples)
        out[-1].errors += sum(run.transport_errors.values())
        out[-1].transport_errors = dict(run.transport_errors)
        return out


def bucket_counts(text: str, name: str, labels: dict[str, str]) -> dict[float, float]:
    """Cumulative ``le`` -> count of one histogram series in a Prometheus scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                out[float(sample.labels["le"])] = sample.value
    return out


def sample_value(text: str, sample_name: str, labels: dict[str, str]) -> float:
    """The sum over the series of one sample name (e.g. a histogram's ``_count``) whose labels match."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` of the observations between two scrapes (linear within a bucket;
    the last finite bound where the quantile falls in the +Inf bucket); None without observations."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def windows(run: ScheduledRun, phases: list[Phase], samples: list[tuple[float, float, int]]) -> list[Window]:
    """Cut a scheduled run into one :class:`Window` per phase: fresh requests by the phase they were sent
    in, retries by the phase of the refusal they answer, server samples by time."""
    out, at = [], 0.0
    for i, phase in enumerate(phases):
        start = run.start_s + at
        w = Window(phase.name, phase.rps, phase.seconds, retry=phase.retry)
        for e in run.events:
            if e.phase != i:
                continue
            code = str(e.status)
            if e.retry:
                w.retries.append((e.retry_after_s or 0.0, e.sent_s - start, code))
                if e.status == 200:
                    w.retry_latencies_ok.append(e.seconds)
                continue
            w.codes[code] = w.codes.get(code, 0) + 1
            w.events.append((e.sent_s - start, code, e.seconds))
            if e.status == 200:
                w.latencies_ok.append(e.seconds)
            elif e.status in (429, 503):
                if e.retry_after_s is None:
                    w.retry_after_missing += 1
            else:
                w.errors += 1
        if phase.rps == 0:  # closed loop: the offered load is what was sent
            w.offered_rps = sum(w.codes.values()) / phase.seconds
        inside = [s for s in samples if start <= s[0] < start + phase.seconds]
        if inside:
            w.max_inflight = max(s[1] for s in inside)
            w.rss_start, w.rss_end = inside[0][2], inside[-1][2]
            w.rss_max = max(s[2] for s in inside)
        w.load_end = os.getloadavg()[0]
        out.append(w)
        at += phase.seconds
    return out


def cpu_list(text: str) -> set[int]:
    """``0`` or ``0,2`` -> a set of core numbers for ``os.sched_setaffinity``."""
    try:
        cpus = {int(c) for c in text.split(",") if c.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected core numbers like 0 or 0,2, got {text!r}") from None
    if not cpus or not cpus <= os.sched_getaffinity(0):
        have = sorted(os.sched_getaffinity(0))
        raise argparse.ArgumentTypeError(f"cores {text!r} are not among this process's {have}")
    return cpus


def server_setting(args: argparse.Namespace, name: str) -> Any:
    """The server's value of one setting: what the benchmark passes, else the server's own default."""
    from service.settings import Settings

    value = getattr(args, name, None)
    return Settings.model_fields[name].default if value is None else value


def batch_requests(args: argparse.Namespace) -> int:
    """Requests of the benchmark's size that one full batch holds."""
    return max(1, int(server_setting(args, "max_batch_size")) // args.instances)


#: the server's keep-alive in these benchmarks: an open-loop wrk connection may idle several seconds
#: between requests at low rates, and uvicorn's 5 s default would close it (wrk counts a read error)
KEEP_ALIVE_S = 75


def _start(args: argparse.Namespace, workdir: Path) -> tuple[ServerProcess, str, dict[str, Any]]:
    env = {
        "LRBNN_DEVICE": "cpu",
        "LRBNN_LOG_LEVEL": "WARNING",  # no access log lines: the log would grow by the request count
        "LRBNN_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
    }
    if args.max_queue is not None:
        env["LRBNN_MAX_QUEUE"] = str(args.max_queue)
    if args.max_batch_size is not None:
        env["LRBNN_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    if args.max_queue_wait_ms is not None:
        env["LRBNN_MAX_QUEUE_WAIT_MS"] = str(args.max_queue_wait_ms)
    if getattr(args, "retry_share", None) is not None:
        env["LRBNN_RETRY_SHARE"] = str(args.retry_share)
    srv = ServerProcess(Path(args.model_repository), workdir / "server.log", env=env, cpus=args.server_cpus)
    srv.wait_ready()
    info = httpx.get(srv.url + "/v1/models", timeout=10).json()["models"][0]
    row = {f["name"]: f["imputed_with"] for f in info["features"] if f["imputed_with"] is not None}
    body = {"instances": [row] * args.instances, "parameters": {"samples": args.samples}}
    return srv, info["name"], body


def _calibrate(load: Load, args: argparse.Namespace) -> dict[str, Any]:
    """Unloaded latency (one client) and saturation (a closed loop of ``--concurrency`` clients), both
    from wrk: a closed loop of clients that never back off measures the server's capacity."""
    load.run([Phase("warm-up", 5)], threads=2)
    (unloaded,) = load.run([Phase("unloaded (1 client)", args.unloaded_seconds)], threads=1)
    concurrency = args.concurrency or 2 * batch_requests(args)
    (saturated,) = load.run([Phase("saturation (closed loop)", args.saturation_seconds)], threads=concurrency)
    sat_rps = max(
        saturated.codes.get("200", 0) / saturated.seconds, unloaded.codes.get("200", 0) / unloaded.seconds
    )
    return {"unloaded": unloaded, "saturated": saturated, "saturation_rps": sat_rps}


def open_loop_threads(args: argparse.Namespace, peak_rps: float, slowest_s: float) -> int:
    """wrk connections for an open-loop schedule. Each connection sends every ``threads / rps`` seconds,
    which at the peak rate should exceed the slowest admitted answer (else a connection still waits when
    its next request is due and sends it late): twice ``peak x slowest_s``. The server under test keeps
    idle connections open ``KEEP_ALIVE_S`` (``_start``), longer than any connection idles here."""
    if args.connections:
        return int(args.connections)
    return max(4, math.ceil(2 * peak_rps * slowest_s))


def cmd_overload(args: argparse.Namespace) -> dict[str, Any]:
    """2x the measured saturation for ``--seconds``, then half of it, judged by issue #13's criteria.

    One wrk run offers 0.5x for 10 s (warm-up), 2x for ``--seconds`` and 0.5x for 20 s back to back, so the
    recovery phase starts the moment the overload ends. Every request refused in the overload phase is
    sent once more after its ``Retry-After`` (a well-behaved client); with ``--reservations`` (the
    default) the overload's requests ask for a retry reservation and the retry sends its token back.
    """
    budget_s = float(server_setting(args, "max_queue_wait_ms")) / 1000.0
    with tempfile.TemporaryDirectory() as tmp:
        srv, model, body = _start(args, Path(tmp))
        try:
            load = Load(srv, model, json.dumps(body).encode(), Path(tmp), sample_every_s=args.sample_every_s)
            cal = _calibrate(load, args)
            sat = cal["saturation_rps"]
            unloaded_p99 = percentile(cal["unloaded"].latencies_ok, 99)
            phases = [
                Phase("warm-up at 0.5x", 10, rps=0.5 * sat),
                Phase("overload 2x", args.seconds, rps=2 * sat, retry=True, reserve=args.reservations),
                Phase("recovery at 0.5x", 20, rps=0.5 * sat),
            ]
            threads = open_loop_threads(args, 2 * sat, budget_s + unloaded_p99)
            warm, over, recovery = load.run(phases, threads, tail_s=budget_s + 5)
        finally:
            srv.stop()
    res = {
        "cal": cal,
        "warm": warm,
        "over": over,
        "recovery": recovery,
        "connections": threads,
        "server_view": load.server_view,
    }
    return judge_overload(args, res, budget_s)


def judge_overload(args: argparse.Namespace, res: dict[str, Any], budget_s: float) -> dict[str, Any]:
    unloaded_p99 = percentile(res["cal"]["unloaded"].latencies_ok, 99)
    sat = res["cal"]["saturation_rps"]
    over, rec = res["over"], res["recovery"]
    over_p99 = percentile(over.latencies_ok, 99)
    with_retries_p99 = percentile(over.latencies_ok + over.retry_latencies_ok, 99)
    refused = sum(v for k, v in over.codes.items() if k in ("429", "503"))
    sent = sum(over.codes.values())
    retries = retry_summary(over.retries, over.seconds)
    fresh_admitted = _frac(over.codes.get("200", 0), sent) or 0.0
    goodput = (over.codes.get("200", 0) + retries["admitted_during_load"]) / over.seconds
    slow = 2 * unloaded_p99
    recovered_after_s = recovered_after(rec.events, slow)
    drain_bound_s = budget_s / (1 - 0.5) + RECOVERY_BIN_S  # one budget of backlog, drained at half load
    after = [sec for t, code, sec in rec.events if t >= recovered_after_s]
    after_ok = all(code == "200" for t, code, _ in rec.events if t >= recovered_after_s)
    after_p99 = percentile(after, 99)
    late = [t for t, code, sec in rec.events if code != "200" or sec > slow]
    by_work = math.ceil(budget_s * sat) + batch_requests(args)
    max_queue = int(server_setting(args, "max_queue"))
    rows: list[tuple[str, str, str, bool]] = [
        (
            "queue bounded (max in flight <= 2x one budget of work + one batch, and <= the count bound)",
            f"{over.max_inflight:g} in flight",
            f"<= {2 * by_work} (budget x saturation = {math.ceil(budget_s * sat)}), <= {max_queue}",
            over.max_inflight <= min(2 * by_work, max_queue + batch_requests(args)),
        ),
        (
            "excess refused with 429/503 + Retry-After",
            f"{refused} refused, {over.retry_after_missing} without Retry-After",
            "> 0, 0 without",
            refused > 0 and over.retry_after_missing == 0,
        ),
        (
            "Retry-After honest after the load ends (retries sent after it admitted)",
            f"{retries['admitted_after_load']} / {retries['retried_after_load']}",
            ">= 95 %",
            (retries["admitted_after_load"] >= 0.95 * retries["retried_after_load"]),
        ),
        (
            "Retry-After honest under load (retries admitted no less often than fresh requests)",
            f"{retries['admitted_during_load']} / {retries['retried_during_load']} "
            f"({_pct(retries['admitted_during_load'], retries['retried_during_load'])}) vs fresh "
            f"{100 * fresh_admitted:.1f} %",
            ">= fresh",
            retries["retried_during_load"] == 0
            or retries["admitted_during_load"] / retries["retried_during_load"] >= fresh_admitted,
        ),
        (
            "goodput >= 90 % of the unloaded saturation rate",
            f"{goodput:.1f} rps = {100 * goodput / sat:.1f} % of {sat:.1f}",
            ">= 90 %",
            goodput >= 0.9 * sat,
        ),
        (
            "admitted p99 <= budget + unloaded p99",
            f"{1000 * over_p99:.1f} ms (with retries {1000 * with_retries_p99:.1f} ms)",
            f"<= {1000 * (budget_s + unloaded_p99):.1f} ms",
            over_p99 <= budget_s + unloaded_p99,
        ),
        (
            "no errors (no 5xx other than 503, no transport errors)",
            f"{over.errors + rec.errors}",
            "0",
            over.errors == 0 and rec.errors == 0,
        ),
        (
            "RSS growth < 10 % after warm-up",
            f"{100 * (over.rss_end / max(1, res['warm'].rss_end) - 1):+.2f} %",
            "< 10 %",
            over.rss_end < 1.10 * res["warm"].rss_end,
        ),
        (
            "recovers at once (healthy once the admitted backlog, <= one budget, has drained)",
            f"healthy from {recovered_after_s:.1f} s",
            f"<= {drain_bound_s:.1f} s",
            recovered_after_s <= drain_bound_s,
        ),
        (
            "after recovery: all answered 200, p99 <= 2x unloaded p99",
            f"p99 {1000 * after_p99:.1f} ms, all 200: {after_ok}",
            f"<= {2000 * unloaded_p99:.1f} ms",
            after_ok and after_p99 <= 2 * unloaded_p99,
        ),
    ]
    phases = [w.summary() for w in (res["cal"]["unloaded"], res["cal"]["saturated"], res["warm"], over, rec)]
    print_table(
        ["phase", "offered rps", "sent", "200", "429", "p50 ms", "p99 ms", "max in flight"],
        [
            [
                ph["phase"],
                ph["offered_rps"],
                ph["sent"],
                ph["codes"].get("200", 0),
                ph["codes"].get("429", 0),
                ph["admitted_p50_ms"],
                ph["admitted_p99_ms"],
                ph["max_inflight_seen"],
            ]
            for ph in phases
        ],
    )
    print_table(
        ["criterion", "measured", "target", "pass"], [[*r[:3], "yes" if r[3] else "**no**"] for r in rows]
    )
    verdict = {r[0]: r[3] for r in rows}
    return {
        "benchmark": "overload",
        "machine": machine(),
        "config": vars(args) | {"func": None},
        "budget_s": budget_s,
        "saturation_rps": round(sat, 2),
        "connections": res["connections"],
        "server_view_of_the_scheduled_run": res["server_view"],
        "unloaded_p99_ms": round(unloaded_p99 * 1000, 2),
        "phases": phases,
        "goodput_during_overload_rps": round(goodput, 2),
        "goodput_over_saturation": round(goodput / sat, 4),
        "admitted_p99_ms": round(over_p99 * 1000, 2),
        "admitted_p99_with_retries_ms": round(with_retries_p99 * 1000, 2),
        "admitted_p99_over_unloaded_p99": round(over_p99 / unloaded_p99, 2),
        "refused_429": over.codes.get("429", 0),
        "refused_503": over.codes.get("503", 0),
        "refusals_without_retry_after": over.retry_after_missing,
        "fresh_admitted_fraction": fresh_admitted,
        "retries": retries,
        "max_inflight_during_overload": over.max_inflight,
        "rss_mb_after_warmup": round(res["warm"].rss_end / 2**20, 1),
        "rss_mb_max_during_overload": round(max(over.rss_max, over.rss_end) / 2**20, 1),
        "rss_growth_after_warmup_pct": round(100 * (over.rss_end / max(1, res["warm"].rss_end) - 1), 2),
        "recovered_after_s": round(recovered_after_s, 2),
        "recovery_p99_after_recovered_ms": _r(1000 * after_p99),
        "last_outlier_s": round(max(late), 2) if late else None,
        "recovery_unhealthy_bins": unhealthy_bins(rec.events, slow),
        "verdict": verdict,
        "pass": all(verdict.values()),
    }


def _pct(num: int, den: int) -> str:
    return f"{100 * num / den:.1f} %" if den else "n/a"


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table on stderr (stdout carries the JSON)."""
    print("| " + " | ".join(header) + " |", file=sys.stderr)
    print("|" + "---|" * len(header), file=sys.stderr)
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |", file=sys.stderr)
    print(file=sys.stderr)


def cmd_soak(args: argparse.Namespace) -> dict[str, Any]:
    """``--fraction`` of the measured saturation for ``--seconds``, one window per ``--window`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        srv, model, body = _start(args, Path(tmp))
        try:
            load = Load(srv, model, json.dumps(body).encode(), Path(tmp), sample_every_s=args.sample_every_s)
            cal = _calibrate(load, args)
            rate = args.fraction * cal["saturation_rps"]
            phases, elapsed = [], 0.0
            while elapsed < args.seconds:
                span = min(args.window, args.seconds - elapsed)
                phases.append(Phase(f"t={int(elapsed)}s", span, rps=rate))
                elapsed += span
            threads = open_loop_threads(args, rate, 2 * percentile(cal["unloaded"].latencies_ok, 99) + 0.1)
            windows = load.run(phases, threads, tail_s=5)
        finally:
            srv.stop()
    p99s = [_or0(percentile(w.latencies_ok, 99)) for w in windows]
    errors = sum(w.errors + sum(v for k, v in w.codes.items() if k != "200") for w in windows)
    first_rss = windows[1].rss_start if len(windows) > 1 else windows[0].rss_start  # after one window
    rss_growth = 100 * (windows[-1].rss_end / max(1, first_rss) - 1)
    steady = p99s[1:] or p99s
    verdict = {
        "zero errors and refusals": errors == 0,
        "p99 stable (max window p99 <= 2x median window p99)": max(steady) <= 2 * statistics.median(steady),
        "RSS growth < 10 % after the first window": rss_growth < 10,
    }
    return {
        "benchmark": "soak",
        "machine": machine(),
        "config": vars(args) | {"func": None},
        "saturation_rps": round(cal["saturation_rps"], 2),
        "offered_rps": round(args.fraction * cal["saturation_rps"], 2),
        "unloaded_p99_ms": _r(1000 * _or0(percentile(cal["unloaded"].latencies_ok, 99))),
        "windows": [w.summary() for w in windows],
        "rss_growth_after_first_window_pct": round(rss_growth, 2),
        "verdict": verdict,
        "pass": all(verdict.values()),
    }


def cmd_burst(args: argparse.Namespace) -> dict[str, Any]:
    """Bursts of requests sent all at once to a server with every default (one patient each, S=100).

    Each size is sent twice, the second time after ``--idle`` seconds without traffic (an idle server's
    estimate must not refuse work it can drain). A refused client retries once after its Retry-After
    (run 1 only). ``work_s`` is the burst's compute: the server's inference seconds per answered request
    (``lrbnn_inference_duration_seconds``) times the burst size. Expected: no refusal where that work,
    plus one full batch, fits in the admission budget; every retry admitted (no fresh load arrives).
    ``drain_s`` is the wall time from the first send to the last answer (the client and the server's
    HTTP parsing share the machine's cores: it is far more than the compute).
    """
    env = {"LRBNN_DEVICE": "cpu", "LRBNN_LOG_LEVEL": "WARNING"}
    if args.max_queue_wait_ms is not None:
        env["LRBNN_MAX_QUEUE_WAIT_MS"] = str(args.max_queue_wait_ms)
    budget_s = float(server_setting(args, "max_queue_wait_ms")) / 1000.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(Path(args.model_repository), Path(tmp) / "server.log", env=env)
        try:
            srv.wait_ready()
            info = httpx.get(srv.url + "/v1/models", timeout=10).json()["models"][0]
            row = {f["name"]: f["imputed_with"] for f in info["features"] if f["imputed_with"] is not None}
            payload = json.dumps({"instances": [row], "parameters": {"samples": args.samples}}).encode()
            url = f"{srv.url}/v1/models/{info['name']}:predict"
            series = {
                k: f'lrbnn_{k}{{model="{info["name"]}"}}'
                for k in (
                    "inference_duration_seconds_sum",
                    "queue_wait_seconds_sum",
                    "queue_wait_seconds_count",
                    "predictions_total",
                )
            }

            def scrape() -> dict[str, float]:
                return {k: srv.metric(v) or 0.0 for k, v in series.items()}

            async def burst(n: int, retry: bool) -> dict[str, Any]:
                before = await asyncio.to_thread(scrape)
                limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
                retried: list[tuple[float, str]] = []
                async with httpx.AsyncClient(timeout=60, limits=limits) as client:

                    async def send() -> str:
                        try:
                            r = await client.post(
                                url, content=payload, headers={"content-type": "application/json"}
                            )
                        except httpx.HTTPError as exc:
                            return type(exc).__name__
                        if retry and r.status_code in (429, 503) and r.headers.get("retry-after"):
                            hint = float(r.headers["retry-after"])
                            await asyncio.sleep(hint)
                            try:
                                again = await client.post(
                                    url, content=payload, headers={"content-type": "application/json"}
                                )
                                retried.append((hint, str(again.status_code)))
                            except httpx.HTTPError as exc:
                                retried.append((hint, type(exc).__name__))
                        return str(r.status_code)

                    t0 = time.perf_counter()
                    answers = await asyncio.gather(*(send() for _ in range(n)))
                    drain = time.perf_counter() - t0
                after = await asyncio.to_thread(scrape)
                delta = {k: after[k] - before[k] for k in after}
                codes: dict[str, int] = {}
                for code in answers:
                    codes[code] = codes.get(code, 0) + 1
                computed = max(1.0, delta["predictions_total"])
                out: dict[str, Any] = {
                    "codes": dict(sorted(codes.items())),
                    "drain_s": round(drain, 3),
                    "work_s": round(n * delta["inference_duration_seconds_sum"] / computed, 3),
                    "mean_queue_wait_ms": _r(
                        1000 * delta["queue_wait_seconds_sum"] / max(1.0, delta["queue_wait_seconds_count"])
                    ),
                }
                if retry:
                    hints = sorted({h for h, _ in retried})
                    out["retries"] = {
                        "retried": len(retried),
                        "admitted": sum(c == "200" for _, c in retried),
                        "retry_after_s": [f"{h:g}" for h in hints],
                    }
                return out

            async def run() -> None:
                for n in args.sizes:
                    first = await burst(n, retry=True)
                    await asyncio.sleep(args.idle)
                    second = await burst(n, retry=False)
                    rows.append({"requests": n, "run1": first, "run2_after_idle": second})
                    await asyncio.sleep(args.idle)

            asyncio.run(run())
        finally:
            srv.stop()
    # the budget covers the wait and the request's own batch: a burst fits when its work and one full
    # batch (64 one-patient requests, ~1/15 of the 1,000-burst's work) take no more than the budget
    full_batch = int(server_setting(args, "max_batch_size"))
    verdict: dict[str, bool] = {}
    for r in rows:
        n = r["requests"]
        for name, got in (("run 1", r["run1"]), ("run 2 after idle", r["run2_after_idle"])):
            fits = got["work_s"] * (1 + min(n, full_batch) / n) <= budget_s
            if fits:
                verdict[f"{n} requests, {name}: work {got['work_s']} s fits, no refusal"] = got["codes"] == {
                    "200": n
                }
        ret = r["run1"].get("retries", {})
        if ret.get("retried"):
            verdict[f"{n} requests: retries after Retry-After admitted (>= 95 %)"] = (
                ret["admitted"] >= 0.95 * ret["retried"]
            )
    table = []
    for r in rows:
        a, b = r["run1"], r["run2_after_idle"]
        ret = a.get("retries", {})
        table.append(
            [
                r["requests"],
                f"{a['codes'].get('200', 0)} / {a['codes'].get('429', 0)}",
                f"{b['codes'].get('200', 0)} / {b['codes'].get('429', 0)}",
                f"{a['work_s']} / {b['work_s']}",
                f"{a['drain_s']} / {b['drain_s']}",
                f"{ret.get('admitted', 0)} / {ret.get('retried', 0)}"
                + (f" (Retry-After {', '.join(ret['retry_after_s'])} s)" if ret.get("retried") else ""),
            ]
        )
    print_table(
        [
            "burst",
            "run 1: 200 / 429",
            "run 2 (after idle): 200 / 429",
            "compute s (run 1 / 2)",
            "drain s (run 1 / 2)",
            "run 1 retries admitted",
        ],
        table,
    )
    print_table(["criterion", "pass"], [[k, "yes" if v else "**no**"] for k, v in verdict.items()])
    return {
        "benchmark": "burst",
        "machine": machine(),
        "budget_s": budget_s,
        "samples": args.samples,
        "bursts": rows,
        "verdict": verdict,
        "pass": all(verdict.values()),
    }


def cmd_fuzz(args: argparse.Namespace) -> dict[str, Any]:
    from fuzzing import ADMIN_TOKEN, fuzz
    from pydantic import SecretStr

    from service.app import create_app
    from service.settings import Settings

    repo = Path(args.model_repository)
    model = sorted(p.name for p in repo.iterdir() if p.is_dir())[0]
    version = sorted((p.name for p in (repo / model).iterdir() if p.is_dir()), key=lambda v: (len(v), v))[-1]
    app = create_app(
        Settings(model_repository=repo, admin_token=SecretStr(ADMIN_TOKEN), log_level="CRITICAL")
    )
    report = fuzz(app, args.cases, seed=args.seed, model=model, version=version)
    return {
        "benchmark": "fuzz",
        "machine": machine(),
        "model": f"{model}/{version}",
        **report.summary(),
        "pass": not report.failures,
    }


def cmd_audit(args: argparse.Namespace) -> dict[str, Any]:
    """``pip-audit`` of the installed environment. It needs PyPI's JSON API or OSV; without them every
    package is skipped, which is reported as "not audited", never as "no vulnerabilities"."""
    exe = Path(sys.executable).with_name("pip-audit")
    cmd = [str(exe), "--progress-spinner", "off", "--format", "json", "--skip-editable"]
    if args.service:
        cmd += ["--vulnerability-service", args.service]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    try:
        deps = json.loads(proc.stdout)["dependencies"]
    except (ValueError, KeyError):
        return {
            "benchmark": "audit",
            "machine": machine(),
            "rc": proc.returncode,
            "error": proc.stderr[-2000:],
        }
    skipped = [d for d in deps if "skip_reason" in d]
    vulns = [
        {"name": d["name"], "version": d.get("version"), "vulns": d["vulns"]} for d in deps if d.get("vulns")
    ]
    audited = len(deps) - len(skipped)
    return {
        "benchmark": "audit",
        "machine": machine(),
        "command": " ".join(cmd),
        "rc": proc.returncode,
        "packages": len(deps),
        "audited": audited,
        "skipped": len(skipped),
        "skip_reasons": sorted({d["skip_reason"].split(":")[0] for d in skipped}),
        "vulnerable": vulns,
        "pass": audited > 0 and not vulns,
    }


PYPI_JSON = "https://pypi.org/pypi/{name}/json"


def _latest_release(name: str, timeout: float) -> dict[str, Any] | None:
    try:
        r = httpx.get(PYPI_JSON.format(name=name), timeout=timeout, follow_redirects=True)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def cmd_audit_latest(args: argparse.Namespace) -> dict[str, Any]:
    """The equivalent of ``pip-audit`` that this network allows: PyPI's project JSON (``/pypi/<name>/json``)
    is reachable here but its per-version form (what pip-audit queries) and OSV are not. The project JSON
    lists the known vulnerabilities of the project's LATEST release, so every installed distribution whose
    version is that latest release is audited exactly; any other is reported as not audited (a fix may
    exist in a release we do not run), never as clean."""
    from concurrent.futures import ThreadPoolExecutor
    from importlib import metadata

    installed = sorted(
        {(d.metadata["Name"], d.version) for d in metadata.distributions() if d.metadata["Name"]},
        key=lambda t: t[0].lower(),
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda nv: _latest_release(nv[0], args.timeout), installed))
    audited, behind, unknown, vulnerable = [], [], [], []
    for (name, version), data in zip(installed, answers, strict=True):
        if data is None:
            unknown.append(name)
            continue
        latest = data["info"]["version"]
        if latest != version:
            behind.append({"name": name, "installed": version, "latest": latest})
            continue
        audited.append(name)
        vulns = [v for v in data.get("vulnerabilities", []) if not v.get("withdrawn")]
        if vulns:
            vulnerable.append({"name": name, "version": version, "vulns": vulns})
    return {
        "benchmark": "audit-latest",
        "machine": machine(),
        "source": PYPI_JSON,
        "packages": len(installed),
        "audited": len(audited),
        "not_audited_behind_latest": behind,
        "not_on_pypi": unknown,
        "vulnerable": vulnerable,
        "pass": bool(audited) and not vulnerable,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def load_args(p: argparse.ArgumentParser, seconds: float) -> None:
        p.add_argument("--model-repository", default=str(DEFAULT_REPO))
        p.add_argument("--seconds", type=float, default=seconds)
        p.add_argument(
            "--sample-every-s",
            type=float,
            default=1.0,
            help="seconds between polls of the in-flight gauge and RSS (each one a /metrics scrape)",
        )
        p.add_argument("--instances", type=int, default=8, help="instances per request")
        p.add_argument("--samples", type=int, default=256, help="Monte Carlo samples per request")
        p.add_argument(
            "--max-queue",
            type=int,
            default=None,
            help="LRBNN_MAX_QUEUE of the server (default: the server's)",
        )
        p.add_argument(
            "--max-queue-wait-ms",
            type=float,
            default=None,
            help="LRBNN_MAX_QUEUE_WAIT_MS of the server (default: the server's; 0 = count bound only)",
        )
        p.add_argument(
            "--max-batch-size",
            type=int,
            default=None,
            help="LRBNN_MAX_BATCH_SIZE of the server (instances; default: the server's)",
        )
        p.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="closed-loop clients for saturation (default: two full batches' worth of requests, enough "
            "to keep the compute thread busy)",
        )
        p.add_argument(
            "--connections",
            type=int,
            default=None,
            help="wrk connections (one thread each) for the open-loop phases (default: twice the peak "
            "rate x the slowest admitted answer, so that no connection still waits when its next is due)",
        )
        p.add_argument("--unloaded-seconds", type=float, default=20)
        p.add_argument("--saturation-seconds", type=float, default=20)
        p.add_argument(
            "--server-cpus",
            type=cpu_list,
            default=None,
            help="pin the server to these cores, e.g. 0 (default: unpinned); with --client-cpus the load "
            "generator cannot take the server's CPU, so saturation and overload measure the server",
        )
        p.add_argument(
            "--client-cpus", type=cpu_list, default=None, help="pin this load generator to these cores"
        )

    p = sub.add_parser("overload", help="2x saturation for --seconds, then recovery")
    load_args(p, 60)
    p.add_argument(
        "--reservations",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="overload clients ask for retry reservations and echo the token (Lrbnn-Retry-Token)",
    )
    p.add_argument(
        "--retry-share", type=float, default=None, help="LRBNN_RETRY_SHARE (default: the server's)"
    )
    p.set_defaults(func=cmd_overload)
    p = sub.add_parser("soak", help="--fraction of saturation for --seconds")
    load_args(p, 1800)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--window", type=float, default=60, help="seconds per reported window")
    p.set_defaults(func=cmd_soak)
    p = sub.add_parser("burst", help="bursts of concurrent one-patient requests, server defaults")
    p.add_argument("--model-repository", default=str(DEFAULT_REPO))
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200, 1000])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--idle", type=float, default=2.0, help="seconds without traffic before each run 2")
    p.add_argument("--max-queue-wait-ms", type=float, default=None, help="default: the server's")
    p.set_defaults(func=cmd_burst)
    p = sub.add_parser("fuzz", help="schemathesis over the OpenAPI document, in-process")
    p.add_argument("--cases", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-repository", default=str(DEFAULT_REPO))
    p.set_defaults(func=cmd_fuzz)
    p = sub.add_parser("audit", help="pip-audit of the installed dependency set")
    p.add_argument("--service", choices=["pypi", "osv"], default=None)
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser(
        "audit-latest", help="vulnerabilities of every installed distribution that is at its latest release"
    )
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_audit_latest)
    for sp in sub.choices.values():
        sp.add_argument("--out", default=None, help="also write the JSON here")

    args = parser.parse_args(argv)
    if getattr(args, "client_cpus", None) is not None:
        os.sched_setaffinity(0, args.client_cpus)  # before any thread: the driver is one asyncio thread
    result = args.func(args)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
