"""Serving load benchmark: ``lrbnn serve`` against MLServer 1.7 on the same checkpoint, side by side.

    .venv/bin/python benchmarks/serve_load.py [--duration 12] [--concurrency 1,8,32,128] [--json-out F]

What runs (every server a subprocess on a free loopback port, started once and kept up for the run):

* ``lrbnn`` - this service (``lrbnn serve``) on ``--checkpoint`` (default the bundled
  ``deploy/models/icu-mortality/1``), default settings except the batching policy, which is set to
  MLServer's (``LRBNN_MAX_BATCH_SIZE=32``, ``LRBNN_MAX_BATCH_DELAY_MS=2``) and ``LRBNN_DEFAULT_SAMPLES``,
  and admission by estimated wait off (``LRBNN_MAX_QUEUE_WAIT_MS=0``, ``--max-queue-wait-ms``): MLServer
  has none;
  ``lrbnn-<n>w`` - the same with ``LRBNN_WORKERS=n`` (``--workers``, default ``1,2``: n server
  processes on one socket);
  ``lrbnn-merged`` - the same with ``LRBNN_BATCH_EXACT=false`` (one network pass per merged batch, the
  computation MLServer's adaptive batching does; answers equal up to float32 rounding);
* ``mlserver`` - MLServer 1.7 (its own venv, ``--mlserver-python``) with the custom runtime
  ``benchmarks/mlserver_runtime/runtime.py`` (``model_core`` load, the service's own V2 row decoding,
  preprocessing and ``TorchRuntime``) and adaptive batching (``max_batch_size`` 32,
  ``max_batch_time`` 2 ms), otherwise MLServer's default settings (one parallel worker, metrics on);
* ``bare-asgi`` - ``benchmarks/bare_asgi.py``: uvicorn (same loop and parser) and a handler that
  parses the JSON body and answers a real answer's bytes; the server CPU per request of every other
  server over this one is the ``fixed_path_cost`` (at c = 1 also in the uncertainty pair's rounds,
  where the deterministic model's ratio is the request path's fixed cost: issue #18's <= 2x);
* ``deterministic`` - this service on a deterministic ICU model (``--deterministic-repo``, or one trained
  here for 5 epochs with ``lrbnn train --method deterministic``), asked for S=1.

Every request is the same V2 (Open Inference Protocol) REST call to both servers: one instance, a FP32
tensor ``features`` [1, F] of raw values in the manifest's feature order (categorical = category index,
``null`` = missing), ``parameters.samples`` = S; the very same bytes go to both. Rows are real SUPPORT2
patients when a data directory is given (``--data-dir`` / ``$LRBNN_DATA_DIR``), else drawn within the
manifest's training ranges.

The load generator is closed-loop: ``c`` keep-alive connections, each sending its next request as soon
as the previous answer arrives, for ``--duration`` seconds per server and level, after ``--warmup``
seconds. ``--client wrk`` (the default when ``wrk`` is on PATH): wrk, one epoll thread in C with a Lua
script that cycles through the bodies and prints its full latency histogram, so rounds pool exactly; it
needs a few percent of a core, leaving the machine to the servers. ``--client httpx``: ``c`` asyncio
workers on one ``httpx.AsyncClient`` (at most ``--max-requests``), which needs up to a whole core at
c >= 32 and so takes it from the servers on a small machine. The servers are measured in turns, split into
``--rounds`` interleaved rounds per level, so a load spike from other jobs on the machine hits every
server alike. Latency is client-side (send to full body). Besides req/s, p50, p99 and errors, each row
gives the server's CPU time per answered request (user + system time of its process tree, MLServer's
inference worker included, during its own measurement windows; Linux ``/proc``) and the load generator's
own CPU use, both far less sensitive to other jobs on a shared machine than latency. ``--torch-threads
N`` sets ``OMP_NUM_THREADS`` for every server alike (default: torch's own choice). Prints a table, the
targets of issue 4 (met / missed), then one JSON object on the last line. Results and the fairness
discussion: ``docs/performance.md`` (Serving).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (Path(__file__).resolve().parent, ROOT):  # the sibling modules; service from a checkout
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from loadgen import Samples, closed_loop, run_wrk, wrk_script  # noqa: E402
from procfs import tree_cpu_seconds  # noqa: E402
from stats import percentile  # noqa: E402

from service.testing import free_port, wait_until_ready  # noqa: E402

RUNTIME_DIR = ROOT / "benchmarks" / "mlserver_runtime"
DEFAULT_CHECKPOINT = ROOT / "deploy" / "models" / "icu-mortality" / "1"
DEFAULT_MLSERVER_PYTHON = Path("/tmp/mlserver-venv/bin/python")
DEFAULT_CONCURRENCY = (1, 8, 32, 128)
SUPPORT2_FILE = Path("support2") / "support2.csv"

# targets of issue 4
TARGET_THROUGHPUT_RATIO_C32 = 2.0
TARGET_SINGLE_P50_MS = 5.0
TARGET_UNCERTAINTY_P50_RATIO = 1.5


# -- arguments -----------------------------------------------------------------------------------
def _concurrency_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"concurrency must be comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return values


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serve_load.py", description="lrbnn serve vs MLServer 1.7: req/s, p50, p99, errors"
    )
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="<repo>/<model>/<version>")
    p.add_argument("--samples", type=_positive_int, default=128, help="S, Monte Carlo samples (default 128)")
    p.add_argument("--concurrency", type=_concurrency_list, default=list(DEFAULT_CONCURRENCY))
    p.add_argument("--duration", type=_positive_float, default=12.0, help="seconds per server and level")
    p.add_argument("--rounds", type=_positive_int, default=2, help="interleaved rounds per level")
    p.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds before each measurement")
    p.add_argument("--max-requests", type=_positive_int, default=20000, help="cap per server and level")
    p.add_argument("--timeout", type=_positive_float, default=30.0, help="client timeout per request (s)")
    p.add_argument("--max-batch-size", type=_positive_int, default=32, help="both servers (default 32)")
    p.add_argument("--max-batch-delay-ms", type=float, default=2.0, help="both servers (default 2)")
    p.add_argument(
        "--mlserver-python",
        type=Path,
        default=DEFAULT_MLSERVER_PYTHON if DEFAULT_MLSERVER_PYTHON.exists() else None,
        help=f"python of a venv with mlserver 1.7 (default {DEFAULT_MLSERVER_PYTHON} when it exists)",
    )
    p.add_argument(
        "--torch-threads",
        type=_positive_int,
        default=None,
        help="OMP_NUM_THREADS/MKL_NUM_THREADS for every server alike (default: unset, torch's default)",
    )
    p.add_argument("--mlserver-workers", type=int, default=1, help="MLServer parallel_workers (default 1)")
    p.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=0.0,
        help="LRBNN_MAX_QUEUE_WAIT_MS of this service (default 0 = off: MLServer has no admission control, "
        "and a closed-loop client at c=128 would otherwise meet 429s; admission is measured by "
        "benchmarks/reliability.py overload)",
    )
    p.add_argument(
        "--client",
        choices=("wrk", "httpx"),
        default="wrk" if shutil.which("wrk") else "httpx",
        help="load generator: wrk (C, one epoll thread, a few %% of a core; default when on PATH) or httpx "
        "(Python asyncio; needs up to a whole core at c >= 32, which it takes from the servers)",
    )
    p.add_argument(
        "--workers",
        type=_concurrency_list,
        default=[1, 2],
        help="this service's worker process counts to measure, comma-separated (default 1,2; 1 is "
        "'lrbnn', n > 1 'lrbnn-<n>w')",
    )
    p.add_argument("--no-mlserver", action="store_true", help="skip MLServer")
    p.add_argument("--no-bare", action="store_true", help="skip the bare-ASGI baseline (bare_asgi.py)")
    p.add_argument("--no-merged", action="store_true", help="skip the LRBNN_BATCH_EXACT=false variant")
    p.add_argument(
        "--no-store-off",
        action="store_true",
        help="skip lrbnn-nostore (LRBNN_STORE_URL=none), the baseline of the prediction store's cost",
    )
    p.add_argument("--deterministic-repo", type=Path, default=None, help="repo with a deterministic model")
    p.add_argument("--deterministic-samples", type=_positive_int, default=1)
    p.add_argument("--no-deterministic", action="store_true", help="skip the uncertainty-cost comparison")
    p.add_argument("--single-duration", type=_positive_float, default=12.0, help="seconds per model, c=1")
    p.add_argument("--data-dir", type=Path, default=None, help="SUPPORT2 rows (default $LRBNN_DATA_DIR)")
    p.add_argument("--rows", type=_positive_int, default=512, help="distinct request bodies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON object here")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy server logs into this folder")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.data_dir is None and os.environ.get("LRBNN_DATA_DIR"):
        args.data_dir = Path(os.environ["LRBNN_DATA_DIR"])
    if args.no_mlserver:
        args.mlserver_python = None
    if args.max_batch_delay_ms < 0:
        build_parser().error("--max-batch-delay-ms must be >= 0")
    if args.warmup < 0:
        build_parser().error("--warmup must be >= 0")
    return args


@dataclass
class LevelResult:
    server: str
    concurrency: int
    ok: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = math.nan  # CPU time of the load generator while it measured this server
    server_cpu_ms_per_req: float = math.nan  # server process tree CPU time / successful requests


def summarize(
    server: str,
    concurrency: int,
    latencies_s: Sequence[float],
    errors: int,
    elapsed_s: float,
    error_kinds: dict[str, int] | None = None,
    client_cpu_s: float = math.nan,
    server_cpu_s: float = math.nan,
) -> LevelResult:
    """Successful-request throughput and latency percentiles (ms) of one server at one level."""
    ms = [v * 1000.0 for v in latencies_s]
    ok = len(ms)
    return LevelResult(
        server=server,
        concurrency=concurrency,
        ok=ok,
        errors=errors,
        elapsed_s=round(elapsed_s, 3),
        rps=(ok / elapsed_s) if elapsed_s > 0 else 0.0,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=(sum(ms) / ok) if ok else math.nan,
        error_kinds=dict(error_kinds or {}),
        client_cpu_s=round(client_cpu_s, 3),
        server_cpu_ms_per_req=(1000.0 * server_cpu_s / ok) if ok else math.nan,
    )


def format_table(results: Sequence[LevelResult]) -> str:
    head = (
        f"{'server':<14} {'c':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'ok':>6} "
        f"{'srv CPU ms/req':>14} {'client CPU':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.server:<14} {r.concurrency:>4} {r.rps:>8.1f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.errors:>6} {r.ok:>6} {r.server_cpu_ms_per_req:>14.2f} {_share(r):>10}"
        )
    return "\n".join(lines)


def _share(r: LevelResult) -> str:
    """The load generator's CPU time as a share of one core over the measured wall time."""
    if not (r.elapsed_s > 0 and math.isfinite(r.client_cpu_s)):
        return "-"
    return f"{100.0 * r.client_cpu_s / r.elapsed_s:.0f}%"


def format_markdown(results: Sequence[LevelResult]) -> str:
    lines = [
        "| server | c | req/s | p50 ms | p99 ms | errors | ok | server CPU ms/req | client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.concurrency} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.errors} | {r.ok} | {r.server_cpu_ms_per_req:.2f} | {_share(r)} |"
        )
    return "\n".join(lines)


# -- the request generator -----------------------------------------------------------------------
def feature_specs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return list(manifest["input_schema"]["preprocessing"]["features"])


def _integral(spec: dict[str, Any]) -> bool:
    return spec.get("unit") in {"count", "0/1", "years"} and spec["name"] != "age"


def synthetic_rows(specs: Sequence[dict[str, Any]], n: int, rng: random.Random) -> list[list[float | None]]:
    """Rows within the training ranges (``min``..``max``); categorical = a random category index;
    about 5 % of the values missing (``None``), as in real ICU records."""
    rows = []
    for _ in range(n):
        row: list[float | None] = []
        for spec in specs:
            if rng.random() < 0.05:
                row.append(None)
            elif spec["kind"] == "categorical":
                row.append(float(rng.randrange(len(spec["categories"]))))
            else:
                lo, hi = float(spec["min"]), float(spec["max"])
                value = rng.uniform(lo, hi)
                row.append(float(round(value)) if _integral(spec) else round(value, 3))
        rows.append(row)
    return rows


def support2_rows(
    specs: Sequence[dict[str, Any]], data_dir: Path, n: int, rng: random.Random
) -> list[list[float | None]]:
    """``n`` real SUPPORT2 patients as tensor rows (raw units; unknown or empty values = missing)."""
    path = data_dir / SUPPORT2_FILE
    with path.open(newline="") as fh:
        records = list(csv.DictReader(fh))
    names = [s["name"] for s in specs]
    missing = [name for name in names if records and name not in records[0]]
    if missing:
        raise ValueError(f"{path}: columns {missing} of the manifest are not in the file")
    picked = rng.sample(records, min(n, len(records)))
    rows = []
    for rec in picked:
        row: list[float | None] = []
        for spec in specs:
            raw = (rec.get(spec["name"]) or "").strip()
            if raw in {"", "NA", "nan"}:
                row.append(None)
            elif spec["kind"] == "categorical":
                cats = spec["categories"]
                row.append(float(cats.index(raw)) if raw in cats else None)
            else:
                try:
                    value = float(raw)
                except ValueError:
                    row.append(None)
                    continue
                row.append(value if math.isfinite(value) else None)
        rows.append(row)
    return rows


def v2_body(row: Sequence[float | None], samples: int, input_name: str = "features") -> bytes:
    """One-instance Open Inference Protocol request: FP32 [1, F], ``parameters.samples``."""
    payload = {
        "inputs": [{"name": input_name, "datatype": "FP32", "shape": [1, len(row)], "data": [list(row)]}],
        "parameters": {"samples": samples},
    }
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def request_bodies(
    manifest: dict[str, Any], n: int, samples: int, seed: int, data_dir: Path | None
) -> tuple[list[bytes], str]:
    rng = random.Random(seed)
    specs = feature_specs(manifest)
    if data_dir is not None and (data_dir / SUPPORT2_FILE).is_file():
        rows, source = support2_rows(specs, data_dir, n, rng), f"SUPPORT2 ({data_dir / SUPPORT2_FILE})"
    else:
        rows, source = synthetic_rows(specs, n, rng), "synthetic rows within the manifest's training ranges"
    return [v2_body(r, samples) for r in rows], source


def _interleaved(
    targets: Sequence[tuple[str, str, list[bytes]]], rounds: int
) -> Iterator[tuple[str, str, list[bytes]]]:
    """Every target once per round, the order alternating between rounds (a load spike from other jobs
    then hits every server alike)."""
    for rnd in range(rounds):
        yield from (targets if rnd % 2 == 0 else list(reversed(targets)))


def _server_cpu(pids: dict[str, int] | None, name: str) -> float:
    pid = (pids or {}).get(name)
    return tree_cpu_seconds(pid) if pid is not None else math.nan


def _results(pooled: dict[str, Samples], concurrency: int) -> list[LevelResult]:
    return [
        summarize(
            name, concurrency, s.latencies_s, s.errors, s.elapsed_s, s.error_kinds, s.cpu_s, s.server_cpu_s
        )
        for name, s in pooled.items()
    ]


def measure_wrk(
    targets: Sequence[tuple[str, str, list[bytes]]],
    concurrency: int,
    duration_s: float,
    rounds: int,
    warmup_s: float,
    timeout_s: float,
    pids: dict[str, int] | None = None,
) -> list[LevelResult]:
    """``measure`` with wrk as the client: same interleaving, warm-up and accounting."""
    pooled = {name: Samples() for name, _, _ in targets}
    with tempfile.TemporaryDirectory(prefix="serve_load_wrk_") as tmp:
        scripts: dict[str, Path] = {}
        for name, _, bodies in targets:
            scripts[name] = Path(tmp) / f"{len(scripts)}.lua"
            scripts[name].write_text(wrk_script(bodies))
        for name, url, _ in targets:
            if warmup_s > 0:
                run_wrk(url, scripts[name], concurrency, warmup_s, timeout_s)
        for name, url, _ in _interleaved(targets, rounds):
            cpu0 = _server_cpu(pids, name)
            got = run_wrk(url, scripts[name], concurrency, duration_s / rounds, timeout_s)
            got.server_cpu_s = _server_cpu(pids, name) - cpu0
            pooled[name].merge(got)
    return _results(pooled, concurrency)


async def measure(
    targets: Sequence[tuple[str, str, list[bytes]]],
    concurrency: int,
    duration_s: float,
    rounds: int,
    warmup_s: float,
    max_requests: int,
    timeout_s: float,
    pids: dict[str, int] | None = None,
) -> list[LevelResult]:
    """Measure every (name, url, bodies) at one concurrency, interleaved over ``rounds`` rounds (the
    order alternates between rounds); one client per target, kept for all its rounds."""
    import httpx

    clients = {
        name: httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=timeout_s,
        )
        for name, _, _ in targets
    }
    pooled = {name: Samples() for name, _, _ in targets}
    try:
        for name, url, bodies in targets:  # open the connections and warm the path up
            if warmup_s > 0:
                await closed_loop(clients[name], url, bodies, concurrency, warmup_s, max_requests)
        for name, url, bodies in _interleaved(targets, rounds):
            cpu0 = _server_cpu(pids, name)
            got = await closed_loop(
                clients[name], url, bodies, concurrency, duration_s / rounds, max(1, max_requests // rounds)
            )
            got.server_cpu_s = _server_cpu(pids, name) - cpu0
            pooled[name].merge(got)
    finally:
        for c in clients.values():
            await c.aclose()
    return _results(pooled, concurrency)


# -- servers -------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    url: str  # the infer URL
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


#: extra environment for every server (the same for all: see ``--torch-threads``)
COMMON_ENV: dict[str, str] = {}


def _spawn(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**env, **COMMON_ENV}
    fh = log.open("wb")
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )  # a session of its own: MLServer's worker processes stop with it


def store_cost(results: list[LevelResult]) -> list[dict[str, Any]]:
    """Throughput with the prediction store on (``lrbnn``, the default) over off (``lrbnn-nostore``),
    per concurrency level, measured in the same interleaved rounds; the target is >= 0.90."""
    by = {(r.server, r.concurrency): r for r in results}
    rows = []
    for (server, c), on in sorted(by.items(), key=lambda kv: kv[0][1]):
        off = by.get(("lrbnn-nostore", c))
        if server != "lrbnn" or off is None or off.rps <= 0:
            continue
        ratio = on.rps / off.rps
        rows.append(
            {"concurrency": c, "on_rps": on.rps, "off_rps": off.rps, "ratio": ratio, "met": ratio >= 0.9}
        )
    return rows


#: the bare-ASGI baseline's name in the results
BARE = "bare-asgi"


def lrbnn_name(workers: int) -> str:
    return "lrbnn" if workers == 1 else f"lrbnn-{workers}w"


def start_lrbnn(name: str, repo: Path, model: str, workdir: Path, extra_env: dict[str, str]) -> Server:
    port = free_port()
    # each server its own prediction store (the default, SQLite), in the run's folder
    env = {
        **os.environ,
        "LRBNN_DEVICE": "cpu",
        "LRBNN_STATE_DIR": str(workdir / f"state-{name}"),
        **extra_env,
    }
    exe = Path(sys.executable).with_name("lrbnn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "model_core.cli"]
    cmd += ["serve", "--model-repository", str(repo), "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / f"{name}.log"
    base = f"http://127.0.0.1:{port}"
    return Server(name, f"{base}/v2/models/{model}/infer", base, _spawn(cmd, env, log, ROOT), log)


def start_bare(reference: Server, body: bytes, model: str, workdir: Path) -> Server:
    """The bare-ASGI baseline (``benchmarks/bare_asgi.py``), answering the bytes of ``reference``'s real
    answer to ``body``, so that both move the same bytes."""
    import httpx

    answer = workdir / "bare-answer.json"
    resp = httpx.post(reference.url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    resp.raise_for_status()
    answer.write_bytes(resp.content)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bare_asgi:app", "--app-dir", str(ROOT / "benchmarks")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    cmd += ["--loop", "auto", "--http", "auto"]  # what lrbnn serve uses
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LRBNN_BARE_ANSWER": str(answer)}
    log = workdir / "bare-asgi.log"
    return Server(BARE, f"{base}/v2/models/{model}/infer", base, _spawn(cmd, env, log, ROOT), log)


def fixed_path_cost(results: Sequence[LevelResult], names: Sequence[str]) -> list[dict[str, Any]]:
    """Server CPU per request of each lrbnn variant over the bare-ASGI baseline's, per concurrency level,
    measured in the same interleaved rounds (issue #18: the request path's fixed cost within 2x of it,
    judged on the deterministic model, whose pass costs next to nothing)."""
    by = {(r.server, r.concurrency): r for r in results}
    rows = []
    for (server, c), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        bare = by.get((BARE, c))
        if server not in names or bare is None or not bare.server_cpu_ms_per_req > 0:
            continue
        rows.append(
            {
                "server": server,
                "concurrency": c,
                "cpu_ms_per_req": r.server_cpu_ms_per_req,
                "bare_cpu_ms_per_req": bare.server_cpu_ms_per_req,
                "ratio": r.server_cpu_ms_per_req / bare.server_cpu_ms_per_req,
            }
        )
    return rows


def prepare_mlserver_dir(
    workdir: Path,
    checkpoint: Path,
    model: str,
    n_features: int,
    samples: int,
    batch: int,
    delay_ms: float,
    workers: int,
) -> Path:
    """Copy the runtime and its settings into ``workdir/mlserver``, filled in for this run."""
    target = workdir / "mlserver"
    target.mkdir()
    shutil.copy(RUNTIME_DIR / "runtime.py", target / "runtime.py")
    settings = json.loads((RUNTIME_DIR / "settings.json").read_text())
    settings["parallel_workers"] = workers
    (target / "settings.json").write_text(json.dumps(settings, indent=2))
    ms = json.loads((RUNTIME_DIR / "model-settings.json").read_text())
    ms["name"] = model
    ms["max_batch_size"] = batch
    ms["max_batch_time"] = delay_ms / 1000.0
    ms["inputs"][0]["shape"] = [-1, n_features]
    ms["parameters"]["uri"] = str(checkpoint.resolve())
    ms["parameters"]["extra"]["samples"] = samples
    (target / "model-settings.json").write_text(json.dumps(ms, indent=2))
    return target


def start_mlserver(
    python: Path, folder: Path, model: str, checkpoint: Path, samples: int, workdir: Path
) -> Server:
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_METRICS_PORT": str(metrics),
        "MLSERVER_HOST": "127.0.0.1",
        "LRBNN_BENCH_CHECKPOINT": str(checkpoint.resolve()),
        "LRBNN_BENCH_SAMPLES": str(samples),
        # model_core from this checkout (the MLServer venv needs no lrbnn install), then the runtime
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    exe = python.with_name("mlserver")
    cmd = [str(exe)] if exe.exists() else [str(python), "-m", "mlserver.cli.main"]
    cmd += ["start", str(folder)]
    log = workdir / "mlserver.log"
    base = f"http://127.0.0.1:{http}"
    return Server("mlserver", f"{base}/v2/models/{model}/infer", base, _spawn(cmd, env, log, folder), log)


def wait_ready(server: Server, model: str, timeout_s: float = 240.0) -> None:
    """Until the model's V2 ready endpoint answers 200 (the same for lrbnn and MLServer)."""
    url = f"{server.base}/v2/models/{model}/ready"
    wait_until_ready(url, server.proc, server.log, timeout_s=timeout_s, interval_s=0.5)


def check_answer(server: Server, body: bytes) -> dict[str, Any]:
    """One request: a 200 with the outputs both servers must give (mean, variance, epistemic, ood...)."""
    import httpx

    resp = httpx.post(server.url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    if resp.status_code != 200:
        log = server.log.read_text(errors="replace")[-4000:] if server.log.exists() else ""
        raise RuntimeError(f"{server.name}: HTTP {resp.status_code}: {resp.text[:500]}\nserver log:\n{log}")
    outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
    missing = {"mean", "variance", "epistemic", "ood_score", "ood"} - outputs.keys()
    if missing:
        raise RuntimeError(f"{server.name}: outputs {sorted(missing)} missing")
    return outputs


def train_deterministic(workdir: Path, model: str, data_dir: Path) -> Path:
    repo = workdir / "deterministic-repo"
    exe = Path(sys.executable).with_name("lrbnn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "model_core.cli"]
    cmd += [
        "train", "--task", "icu", "--method", "deterministic", "--epochs", "5", "--model-name", model,
        "--out", str(repo / model / "1"), "--data-dir", str(data_dir), "--no-progress",
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return repo


# -- targets -------------------------------------------------------------------------------------
def evaluate_targets(
    results: Sequence[LevelResult], ours: str, theirs: str | None, uncertainty: dict[str, Any] | None
) -> dict[str, Any]:
    by = {(r.server, r.concurrency): r for r in results}
    out: dict[str, Any] = {}
    if theirs is not None and (ours, 32) in by and (theirs, 32) in by:
        ratio = by[(ours, 32)].rps / by[(theirs, 32)].rps if by[(theirs, 32)].rps > 0 else math.inf
        out["throughput_c32_ratio"] = {
            "value": round(ratio, 3),
            "target": f">= {TARGET_THROUGHPUT_RATIO_C32}",
            "met": ratio >= TARGET_THROUGHPUT_RATIO_C32,
        }
    if theirs is not None:
        levels = sorted({c for (s, c) in by if s == ours and (theirs, c) in by})
        per = {c: (by[(ours, c)].p99_ms, by[(theirs, c)].p99_ms) for c in levels}
        out["p99_lower_every_level"] = {
            "value": {str(c): {"ours": round(a, 2), "mlserver": round(b, 2)} for c, (a, b) in per.items()},
            "met": bool(per) and all(a < b for a, b in per.values()),
        }
    if (ours, 1) in by:
        p50 = by[(ours, 1)].p50_ms
        out["single_request_p50_ms"] = {
            "value": round(p50, 3),
            "target": f"< {TARGET_SINGLE_P50_MS}",
            "met": p50 < TARGET_SINGLE_P50_MS,
        }
    if uncertainty is not None:
        ratio = uncertainty["ratio"]
        out["uncertainty_p50_ratio"] = {
            "value": round(ratio, 3),
            "target": f"<= {TARGET_UNCERTAINTY_P50_RATIO}",
            "met": ratio <= TARGET_UNCERTAINTY_P50_RATIO,
        }
    return out


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _mlserver_version(python: Path) -> str:
    try:
        res = subprocess.run(
            [str(python), "-c", "import mlserver; print(mlserver.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- main ----------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = json.loads((args.checkpoint / "manifest.json").read_text())
    model = manifest["model_name"]
    n_features = len(feature_specs(manifest))
    bodies, source = request_bodies(manifest, args.rows, args.samples, args.seed, args.data_dir)
    report: dict[str, Any] = {
        "benchmark": "serve_load",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": _loadavg(),
        },
        "config": {
            "checkpoint": str(args.checkpoint),
            "samples": args.samples,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "max_batch_size": args.max_batch_size,
            "max_batch_delay_ms": args.max_batch_delay_ms,
            "rows": source,
            "instances_per_request": 1,
            "client": args.client,
            "lrbnn_workers": args.workers,
        },
    }
    if args.torch_threads is not None:
        COMMON_ENV.update(OMP_NUM_THREADS=str(args.torch_threads), MKL_NUM_THREADS=str(args.torch_threads))
    report["config"]["torch_threads"] = args.torch_threads or "default"
    lrbnn_env = {
        "LRBNN_MAX_BATCH_SIZE": str(args.max_batch_size),
        "LRBNN_MAX_BATCH_DELAY_MS": str(args.max_batch_delay_ms),
        "LRBNN_DEFAULT_SAMPLES": str(args.samples),
        "LRBNN_MAX_QUEUE_WAIT_MS": str(args.max_queue_wait_ms),
    }
    report["config"]["lrbnn_max_queue_wait_ms"] = args.max_queue_wait_ms
    workdir = Path(tempfile.mkdtemp(prefix="serve_load_"))
    servers: list[Server] = []
    try:
        for n in args.workers:
            servers.append(
                start_lrbnn(
                    lrbnn_name(n),
                    args.checkpoint.parent.parent,
                    model,
                    workdir,
                    {**lrbnn_env, "LRBNN_WORKERS": str(n)},
                )
            )
        if not args.no_merged:
            servers.append(
                start_lrbnn(
                    "lrbnn-merged",
                    args.checkpoint.parent.parent,
                    model,
                    workdir,
                    {**lrbnn_env, "LRBNN_BATCH_EXACT": "false"},
                )
            )
        if not args.no_store_off:
            servers.append(
                start_lrbnn(
                    "lrbnn-nostore",
                    args.checkpoint.parent.parent,
                    model,
                    workdir,
                    {**lrbnn_env, "LRBNN_STORE_URL": "none"},
                )
            )
        mlserver_name = None
        if args.mlserver_python is None:
            print(
                "MLServer skipped: no --mlserver-python (and /tmp/mlserver-venv/bin/python is absent)",
                file=sys.stderr,
            )
            report["mlserver"] = "skipped"
        elif not args.checkpoint.parent.parent.joinpath(model).is_dir():
            raise SystemExit(f"{args.checkpoint}: expected <repo>/{model}/<version>")
        else:
            folder = prepare_mlserver_dir(
                workdir,
                args.checkpoint,
                model,
                n_features,
                args.samples,
                args.max_batch_size,
                args.max_batch_delay_ms,
                args.mlserver_workers,
            )
            servers.append(
                start_mlserver(args.mlserver_python, folder, model, args.checkpoint, args.samples, workdir)
            )
            mlserver_name = "mlserver"
            report["mlserver"] = {
                "version": _mlserver_version(args.mlserver_python),
                "parallel_workers": args.mlserver_workers,
                "max_batch_size": args.max_batch_size,
                "max_batch_time_s": args.max_batch_delay_ms / 1000.0,
            }
        det_server = None
        if not args.no_deterministic:
            det_repo = args.deterministic_repo
            if det_repo is None:
                if args.data_dir is None:
                    print(
                        "deterministic comparison skipped: give --deterministic-repo or a data directory",
                        file=sys.stderr,
                    )
                else:
                    print("training a deterministic ICU model (5 epochs) ...", file=sys.stderr, flush=True)
                    det_repo = train_deterministic(workdir, model, args.data_dir)
            if det_repo is not None:
                det_server = start_lrbnn(
                    "deterministic",
                    det_repo,
                    model,
                    workdir,
                    {**lrbnn_env, "LRBNN_WORKERS": str(args.workers[0])},
                )
                servers.append(det_server)
        for s in servers:
            wait_ready(s, model)
            check_answer(s, bodies[0])
        if not args.no_bare:
            bare = start_bare(servers[0], bodies[0], model, workdir)
            wait_ready(bare, model)
            check_answer(bare, bodies[0])
            servers.append(bare)
        print(
            f"servers ready: {', '.join(s.name for s in servers)}; rows: {source}",
            file=sys.stderr,
            flush=True,
        )

        main_servers = [s for s in servers if s is not det_server]
        pids = {s.name: s.proc.pid for s in servers}
        pids[f"lrbnn S={args.samples}"] = servers[0].proc.pid
        results: list[LevelResult] = []
        for c in args.concurrency:
            targets = [(s.name, s.url, bodies) for s in main_servers]
            if args.client == "wrk":
                level = measure_wrk(targets, c, args.duration, args.rounds, args.warmup, args.timeout, pids)
            else:
                level = asyncio.run(
                    measure(
                        targets,
                        c,
                        args.duration,
                        args.rounds,
                        args.warmup,
                        args.max_requests,
                        args.timeout,
                        pids,
                    )
                )
            results.extend(level)
            for r in level:
                print(
                    f"  {r.server:<14} c={c:<4} {r.rps:8.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
                    f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}  "
                    f"server CPU {r.server_cpu_ms_per_req:.2f} ms/req",
                    file=sys.stderr,
                    flush=True,
                )
            dead = [s.name for s in servers if not s.alive()]
            if dead:
                raise RuntimeError(f"server(s) died during the run: {dead}")

        uncertainty = None
        if det_server is not None:
            det_bodies = [
                v2_body(json.loads(b)["inputs"][0]["data"][0], args.deterministic_samples) for b in bodies
            ]
            pair_targets = [
                (f"lrbnn S={args.samples}", servers[0].url, bodies),
                ("deterministic", det_server.url, det_bodies),
            ]
            bare_server = next((s for s in servers if s.name == BARE), None)
            if bare_server is not None:  # the fixed request path, judged at c = 1 in the same rounds
                pair_targets.append((BARE, bare_server.url, bodies))
            if args.client == "wrk":
                pair = measure_wrk(pair_targets, 1, args.single_duration, 4, args.warmup, args.timeout, pids)
            else:
                pair = asyncio.run(
                    measure(
                        pair_targets,
                        1,
                        args.single_duration,
                        4,
                        args.warmup,
                        args.max_requests,
                        args.timeout,
                        pids,
                    )
                )
            uncertainty = {
                "bayesian": asdict(pair[0]),
                "deterministic": asdict(pair[1]),
                "deterministic_samples": args.deterministic_samples,
                "ratio": pair[0].p50_ms / pair[1].p50_ms,
            }
            report["uncertainty_cost"] = uncertainty
            if bare_server is not None:
                report["fixed_path_cost_c1"] = fixed_path_cost(pair, ["deterministic", pair[0].server])

        report["results"] = [asdict(r) for r in results]
        report["targets"] = {
            lrbnn_name(n): evaluate_targets(
                results, lrbnn_name(n), mlserver_name, uncertainty if i == 0 else None
            )
            for i, n in enumerate(args.workers)
        }
        if not args.no_merged:
            report["targets"]["lrbnn-merged"] = evaluate_targets(results, "lrbnn-merged", mlserver_name, None)
        if not args.no_store_off:
            report["store_cost"] = store_cost(results)
        if not args.no_bare:
            report["fixed_path_cost"] = fixed_path_cost(results, [s.name for s in servers if s.name != BARE])
        report["machine"]["loadavg_end"] = _loadavg()

        print(format_table(results))
        if uncertainty is not None:
            print()
            print(
                format_table(
                    [LevelResult(**uncertainty["bayesian"]), LevelResult(**uncertainty["deterministic"])]
                )
            )
            ratio_text = f"{uncertainty['ratio']:.2f}"
            print(
                f"uncertainty cost: p50 ratio S={args.samples} / deterministic "
                f"S={args.deterministic_samples} = {ratio_text}"
            )
        for row in report.get("store_cost", []):
            print(
                f"store cost c={row['concurrency']}: store on {row['on_rps']:.0f} req/s, off "
                f"{row['off_rps']:.0f} req/s, ratio {row['ratio']:.3f} "
                f"({'MET' if row['met'] else 'MISSED'}: >= 0.90)"
            )
        for row in report.get("fixed_path_cost", []) + report.get("fixed_path_cost_c1", []):
            print(
                f"server CPU over bare ASGI, {row['server']} c={row['concurrency']}: "
                f"{row['cpu_ms_per_req']:.2f} / {row['bare_cpu_ms_per_req']:.2f} ms = {row['ratio']:.2f}x"
            )
        for variant, t in report["targets"].items():
            for key, v in t.items():
                print(f"target {variant:<13} {key:<24} {'MET' if v['met'] else 'MISSED'}  {v['value']}")
        text = json.dumps(report, allow_nan=True, default=str)
        if args.json_out is not None:
            args.json_out.write_text(text + "\n")
        print(text)
        return 0
    finally:
        for s in servers:
            s.stop()
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
