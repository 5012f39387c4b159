"""Event-loop CPU per request of the service's ASGI app, called directly (no socket, no client).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loop_cpu.py [--requests 2000] [--concurrency 32] [--v1]
        [--model icu-mortality] [--profile out.prof]

Why this number: the service's throughput on a small model is bound by its one event-loop thread
(parsing, validation, preprocessing, metrics, logging), not by the sampling, which runs in a worker
thread. The loop thread's CPU time per answered request (``time.thread_time``) barely depends on what
else runs on the machine, unlike latency or req/s on a shared box, so before/after comparisons of the
request path are meaningful here. Admission by estimated wait is off (every request is answered).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.app import create_app  # noqa: E402
from service.logs import JsonFormatter  # noqa: E402
from service.settings import Settings  # noqa: E402


def _body(served: Any, v1: bool, samples: int) -> tuple[str, bytes]:
    """One instance of all-imputed (median / mode) raw values, as V1 named features or a V2 tensor."""
    feats = served.inputs.features()
    if v1:
        inst = {spec.name: spec.impute for spec in feats}
        payload: dict[str, Any] = {"instances": [inst], "parameters": {"samples": samples}}
        return f"/v1/models/{served.name}:predict", json.dumps(payload).encode()
    data = [
        spec.categories.index(spec.impute) if spec.kind == "categorical" else spec.impute for spec in feats
    ]
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, len(feats)], "data": data}
    payload = {"inputs": [tensor], "parameters": {"samples": samples}}
    return f"/v2/models/{served.name}/infer", json.dumps(payload).encode()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(
        model_repository=args.model_repository,
        max_batch_size=32,
        max_batch_delay_ms=2.0,
        max_queue_wait_ms=0.0,
    )
    app = create_app(settings)
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - the access log is formatted, not shown
    sink.setFormatter(JsonFormatter())
    logging.getLogger("lrbnn").handlers[:] = [sink]
    async with app.router.lifespan_context(app):
        assert app.state.lrbnn.loading is not None
        await app.state.lrbnn.loading
        served = app.state.lrbnn.repository.get(args.model)
        path, body = _body(served, args.v1, args.samples)
        headers = [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        statuses: dict[int, int] = {}
        never = asyncio.Event()

        async def one() -> None:
            scope = {
                "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555), "scheme": "http",
                "method": "POST", "root_path": "", "path": path, "raw_path": path.encode(),
                "query_string": b"", "headers": list(headers), "state": {},
            }  # fmt: skip
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await never.wait()  # no disconnect
                return {"type": "http.disconnect"}

            async def send(msg: MutableMapping[str, Any]) -> None:
                if msg["type"] == "http.response.start":
                    statuses[msg["status"]] = statuses.get(msg["status"], 0) + 1

            await app(scope, receive, send)

        async def worker(k: int) -> None:
            for _ in range(k):
                await one()

        await asyncio.gather(*(worker(20) for _ in range(args.concurrency)))  # warm-up
        statuses.clear()
        per = max(1, args.requests // args.concurrency)
        prof = cProfile.Profile(time.thread_time) if args.profile else None
        t_cpu, t_wall = time.thread_time(), time.perf_counter()
        if prof is not None:
            prof.enable()
        await asyncio.gather(*(worker(per) for _ in range(args.concurrency)))
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
        t_cpu, t_wall = time.thread_time() - t_cpu, time.perf_counter() - t_wall
        n = per * args.concurrency
        return {
            "benchmark": "loop_cpu",
            "path": path,
            "requests": n,
            "concurrency": args.concurrency,
            "samples": args.samples,
            "loop_cpu_us_per_request": round(t_cpu / n * 1e6, 1),
            "wall_requests_per_s": round(n / t_wall, 1),
            "statuses": statuses,
            "profiled": bool(prof),
            "load_average": [round(v, 2) for v in os.getloadavg()],
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", default=str(ROOT / "deploy" / "models"))
    p.add_argument("--model", default="icu-mortality")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--v1", action="store_true", help="V1 named features instead of the V2 tensor")
    p.add_argument("--profile", default=None, help="also write a cProfile (thread CPU time) here")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
