"""What FHIR costs per request: the same patients through ``:predict`` (V1) and ``:predict-fhir``.

    .venv/bin/python benchmarks/fhir_cost.py [--requests 300] [--patients 1000] [--json-out F]

In process (the real app over httpx's ASGI transport, no socket, so the protocol work is what is
measured, not the network), on the bundled ICU model with S = 128: one patient per request (a Bundle of
a Patient and 4 Observations in °F, µmol/L, mmHg, /min, against the same patient in canonical units
through V1), interleaved, then one Bundle of ``--patients`` patients against one V1 request with as
many instances. Reports wall time per request (median and p90) and the ratio; the process's CPU time
per request as well. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "service"))  # the FHIR test fixtures: the same patients as the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fhir_helpers import FEVERISH_V1, ICU, bundle, feverish_patient, icu_repository  # noqa: E402
from stats import percentile  # noqa: E402


async def run(requests: int, patients: int) -> dict[str, Any]:
    import httpx

    from service.app import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="fhir_cost_") as tmp:
        repo = icu_repository(Path(tmp) / "models")
        settings = Settings(
            model_repository=repo, state_dir=Path(tmp) / "state", default_samples=128, log_level="WARNING"
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            assert app.state.lrbnn.loading is not None
            await app.state.lrbnn.loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b", timeout=120) as c:
                v1_body = json.dumps({"instances": [FEVERISH_V1]}).encode()
                fhir_body = json.dumps(bundle(*feverish_patient())).encode()
                calls = {
                    "v1": (f"/v1/models/{ICU}:predict", v1_body),
                    "fhir": (f"/v1/models/{ICU}:predict-fhir", fhir_body),
                }
                single: dict[str, list[float]] = {k: [] for k in calls}
                cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
                for i in range(requests + 20):
                    for name in calls if i % 2 == 0 else reversed(list(calls)):
                        path, body = calls[name]
                        c0, t0 = time.process_time(), time.perf_counter()
                        r = await c.post(path, content=body)
                        dt, dc = time.perf_counter() - t0, time.process_time() - c0
                        assert r.status_code == 200, r.text
                        if i >= 20:  # warm-up
                            single[name].append(dt)
                            cpu[name] += dc
                entries: list[dict[str, Any]] = []
                for k in range(patients):
                    entries += feverish_patient(f"p{k}")
                big_fhir = json.dumps(bundle(*entries)).encode()
                big_v1 = json.dumps({"instances": [FEVERISH_V1] * patients}).encode()
                many = {}
                for name, path, body in (
                    ("v1", calls["v1"][0], big_v1),
                    ("fhir", calls["fhir"][0], big_fhir),
                ):
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        r = await c.post(path, content=body)
                        times.append(time.perf_counter() - t0)
                        assert r.status_code == 200, r.text[:300]
                    many[name] = {
                        "seconds": min(times),
                        "body_bytes": len(body),
                        "answer_bytes": len(r.content),
                    }
    out: dict[str, Any] = {
        "samples": 128,
        "requests": requests,
        "patients": patients,
        "single": {},
        "bundle": many,
    }
    for name, ts in single.items():
        ms = [t * 1e3 for t in ts]
        out["single"][name] = {
            "p50_ms": percentile(ms, 50),
            "p90_ms": percentile(ms, 90),
            "cpu_ms_per_request": 1e3 * cpu[name] / len(ts),
        }
    out["single_ratio_p50"] = out["single"]["fhir"]["p50_ms"] / out["single"]["v1"]["p50_ms"]
    out["bundle_ratio"] = many["fhir"]["seconds"] / many["v1"]["seconds"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="one-patient requests per route")
    p.add_argument("--patients", type=int, default=1000, help="patients in the large Bundle")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    out = asyncio.run(run(args.requests, args.patients))
    print(f"{'route':<8} {'p50 ms':>8} {'p90 ms':>8} {'CPU ms/req':>10}   (one patient, S = 128, in process)")
    for name, row in out["single"].items():
        print(f"{name:<8} {row['p50_ms']:8.2f} {row['p90_ms']:8.2f} {row['cpu_ms_per_request']:10.2f}")
    print(f"FHIR / V1 p50: {out['single_ratio_p50']:.2f}x")
    for name, row in out["bundle"].items():
        print(
            f"{args.patients} patients via {name}: {row['seconds']:.2f} s "
            f"({row['body_bytes'] / 1e6:.2f} MB in, {row['answer_bytes'] / 1e6:.2f} MB out)"
        )
    print(f"FHIR / V1 for {args.patients} patients: {out['bundle_ratio']:.2f}x")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
