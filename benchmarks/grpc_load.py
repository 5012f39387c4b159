"""gRPC beside REST on one server: the Open Inference Protocol over both, same model, same rows.

    .venv/bin/python benchmarks/grpc_load.py [--duration 8] [--concurrency 1,8,32] [--json-out F]

One ``lrbnn serve`` (the bundled ICU model, ``LRBNN_GRPC_PORT`` on a free port) answers both clients,
so they share the process, the batcher and the model: what differs is the protocol stack alone. The
REST client is ``serve_load``'s closed loop (httpx, V2 JSON bodies); the gRPC client is
``tritonclient.grpc.aio`` unmodified (``c`` concurrent calls on one channel, the way Triton's client is
used), each request one instance FP32 [1, F] with ``samples`` = S. Levels run REST and gRPC in
interleaved rounds (the order alternating) so load from other jobs hits both alike. Reported per
protocol and level: req/s, p50 and p99 latency (client side), the server's CPU time per answered
request (its process tree, Linux ``/proc``) and the load generator's CPU seconds. This script sits
beside ``serve_load.py`` (server against MLServer), which it imports for the closed loop, the rows and
the accounting. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Samples, closed_loop, run_wrk, wrk_script
from procfs import tree_cpu_seconds
from serve_load import (
    DEFAULT_CHECKPOINT,
    _interleaved,
    format_table,
    request_bodies,
    start_lrbnn,
    summarize,
    wait_ready,
)

from service.testing import free_port


def grpc_inputs(bodies: Sequence[bytes]) -> list[np.ndarray]:
    """The very rows of the REST bodies as FP32 arrays (null = NaN: missing, imputed as in REST)."""
    out = []
    for body in bodies:
        data = json.loads(body)["inputs"][0]["data"]
        out.append(np.array([[math.nan if v is None else v for v in data[0]]], dtype=np.float32))
    return out


async def grpc_loop(
    client: Any, model: str, rows: Sequence[np.ndarray], samples: int, concurrency: int, duration_s: float
) -> Samples:
    """``concurrency`` callers back to back on one channel for ``duration_s`` (as ``closed_loop``)."""
    import tritonclient.grpc.aio as grpcclient

    out = Samples()
    start = time.perf_counter()
    cpu0 = time.process_time()
    deadline = start + duration_s

    async def worker(wid: int) -> None:
        i = wid * 7919
        while time.perf_counter() < deadline:
            x = rows[i % len(rows)]
            i += 1
            inp = grpcclient.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            t0 = time.perf_counter()
            try:
                await client.infer(model, [inp], parameters={"samples": samples})
            except Exception as exc:  # counted, never abort the run
                out.add_error(type(exc).__name__)
                continue
            out.latencies_s.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    out.elapsed_s = time.perf_counter() - start
    out.cpu_s = time.process_time() - cpu0
    return out


async def measure(
    rest_url: str,
    grpc_target: str,
    model: str,
    bodies: list[bytes],
    samples: int,
    concurrency: int,
    duration_s: float,
    rounds: int,
    warmup_s: float,
    pid: int,
    wrk: Path | None,
) -> list[Any]:
    import httpx
    import tritonclient.grpc.aio as grpcclient

    rows = grpc_inputs(bodies)
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency), timeout=30
    )
    rpc = grpcclient.InferenceServerClient(grpc_target)
    pooled = {"rest": Samples(), "grpc": Samples()}

    async def run(name: str, seconds: float) -> Samples:
        if name == "rest" and wrk is not None:
            return await asyncio.to_thread(run_wrk, rest_url, wrk, concurrency, seconds, 30.0)
        if name == "rest":
            return await closed_loop(http, rest_url, bodies, concurrency, seconds, 10**9)
        return await grpc_loop(rpc, model, rows, samples, concurrency, seconds)

    try:
        for name in pooled:  # connections open, paths warm
            await run(name, warmup_s)
        for name, _, _ in _interleaved([("rest", "", []), ("grpc", "", [])], rounds):
            cpu0 = tree_cpu_seconds(pid)
            got = await run(name, duration_s / rounds)
            got.server_cpu_s = tree_cpu_seconds(pid) - cpu0
            pooled[name].merge(got)
    finally:
        await http.aclose()
        await rpc.close()
    return [
        summarize(
            f"lrbnn-{name}",
            concurrency,
            s.latencies_s,
            s.errors,
            s.elapsed_s,
            s.error_kinds,
            s.cpu_s,
            s.server_cpu_s,
        )
        for name, s in pooled.items()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="<repo>/<model>/<version>")
    p.add_argument("--samples", type=int, default=128, help="S, Monte Carlo samples (default 128)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per protocol and level")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per level")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per protocol and level")
    p.add_argument("--rows", type=int, default=256, help="distinct request rows")
    p.add_argument("--data-dir", type=Path, default=None, help="SUPPORT2 rows (default: synthetic)")
    p.add_argument(
        "--rest-client",
        choices=("wrk", "httpx"),
        default="wrk" if shutil.which("wrk") else "httpx",
        help="REST load generator (default wrk when on PATH: a C epoll loop, as in serve_load.py)",
    )
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    ckpt = args.checkpoint.resolve()
    model, repo = ckpt.parent.name, ckpt.parent.parent
    manifest = json.loads((ckpt / "manifest.json").read_text())
    bodies, source = request_bodies(manifest, args.rows, args.samples, 0, args.data_dir)
    port = free_port()
    env = {
        "LRBNN_GRPC_PORT": str(port),
        "LRBNN_DEFAULT_SAMPLES": str(args.samples),
        "LRBNN_MAX_QUEUE_WAIT_MS": "0",
        "LRBNN_LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryDirectory(prefix="grpc_load_") as tmp:
        server = start_lrbnn("lrbnn", repo, model, Path(tmp), env)
        wrk = None
        if args.rest_client == "wrk":
            wrk = Path(tmp) / "bodies.lua"
            wrk.write_text(wrk_script(bodies))
        try:
            wait_ready(server, model)
            results = []
            for c in levels:
                results += asyncio.run(
                    measure(
                        server.url,
                        f"127.0.0.1:{port}",
                        model,
                        bodies,
                        args.samples,
                        c,
                        args.duration,
                        args.rounds,
                        args.warmup,
                        server.proc.pid,
                        wrk,
                    )
                )
        finally:
            server.stop()
    print(f"rows: {source}; S = {args.samples}; one server answering both; REST client {args.rest_client}")
    print(format_table(results))
    ratios = {}
    for c in levels:
        by = {r.server: r for r in results if r.concurrency == c}
        rest, grpc = by["lrbnn-rest"], by["lrbnn-grpc"]
        ratios[c] = {
            "rps_grpc_over_rest": grpc.rps / rest.rps if rest.rps else math.nan,
            "p99_grpc_over_rest": grpc.p99_ms / rest.p99_ms if rest.p99_ms else math.nan,
            "server_cpu_grpc_over_rest": grpc.server_cpu_ms_per_req / rest.server_cpu_ms_per_req,
        }
        r = ratios[c]
        print(
            f"c={c}: gRPC/REST req/s {r['rps_grpc_over_rest']:.2f}x, p99 {r['p99_grpc_over_rest']:.2f}x, "
            f"server CPU/req {r['server_cpu_grpc_over_rest']:.2f}x"
        )
    report = {
        "samples": args.samples,
        "rows": source,
        "results": [asdict(r) for r in results],
        "ratios": ratios,
    }
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
