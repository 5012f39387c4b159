"""Faults: bad model versions at start-up and reload, a model whose compute raises, clients that vanish,
and SIGTERM under load. ``tests/service`` already covers a bit-flipped version refused at reload (409,
old version serving), an unparsable manifest at start-up, timeouts freeing their slot and a queued client
that disconnects; this file adds truncated / tampered / corrupt versions at start-up and reload with
their log lines, compute faults, disconnects mid-body and mid-compute on a real server, and a SIGTERM
under sustained load checked request by request against the server's own log.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import toy
from reliability_helpers import captured_logs
from service_helpers import ServeApp, copy_version, metric_value

from service.testing import ServerProcess

PREDICT = "/v1/models/toy:predict"
BODY = {"instances": [toy.instance()], "parameters": {"seed": 1}}


def _clone(repo: Path, name: str, version: str = "1") -> Path:
    """``repo/toy/1`` copied as ``repo/<name>/<version>`` with its manifest renamed accordingly."""
    target = repo / name / version
    shutil.copytree(repo / toy.MODEL / "1", target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(model_name=name, model_version=version)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def _truncate(version_dir: Path) -> None:
    weights = version_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _flip_bit(version_dir: Path) -> None:
    weights = version_dir / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-9] ^= 0x10
    weights.write_bytes(bytes(blob))


def _tamper_manifest(version_dir: Path) -> None:
    """A manifest edited by hand: the declared weights hash no longer matches the file."""
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))


def _tamper_architecture(version_dir: Path) -> None:
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["parameter_count"] = int(manifest["parameter_count"]) + 1
    path.write_text(json.dumps(manifest))


BREAKERS = {
    "truncated": (_truncate, ("safetensors", "sha256", "truncat", "header", "size")),
    "bitflip": (_flip_bit, ("sha256",)),
    "tampered-hash": (_tamper_manifest, ("sha256",)),
    "tampered-architecture": (_tamper_architecture, ("parameter", "count")),
}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_bad_versions_are_refused_at_startup_with_a_log_line(repo: Path) -> None:
    from service.app import create_app
    from service.settings import Settings

    for kind, (breaker, _) in BREAKERS.items():
        breaker(_clone(repo, f"toy-{kind}"))
    app = create_app(Settings(model_repository=repo))
    with captured_logs() as lines:
        async with app.router.lifespan_context(app):
            await app.state.lrbnn.loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                # policy: the good model serves; /readyz stays 503 "failed" (a bad rollout must page)
                ready = await client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["status"] == "failed"
                assert sorted(ready.json()["errors"]) == sorted(f"toy-{k}" for k in BREAKERS)
                assert (await client.post(PREDICT, json=BODY)).status_code == 200
                for kind in BREAKERS:
                    r = await client.post(f"/v1/models/toy-{kind}:predict", json=BODY)
                    assert r.status_code == 404 and r.json()["field"] == "name"
                assert (await client.get("/livez")).status_code == 200
    failed = [json.loads(line) for line in lines if '"model failed to load"' in line]
    by_model = {rec["model"]: rec["error"].lower() for rec in failed}
    for kind, (_, words) in BREAKERS.items():
        error = by_model[f"toy-{kind}"]
        assert any(w in error for w in words), (kind, error)
        assert f"toy-{kind}" in error  # the line names the version directory


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_bad_versions_are_refused_at_reload_while_the_good_one_serves(
    serve_app: ServeApp, repo: Path
) -> None:
    admin = {"authorization": "Bearer root"}
    async with serve_app(admin_token="root") as client:
        with captured_logs() as lines:
            for i, (kind, (breaker, words)) in enumerate(BREAKERS.items(), start=2):
                version = copy_version(repo, "1", str(i))
                if kind != "tampered-architecture":  # a clean re-save first, so only the breaker differs
                    from model_core.checkpoint import load_checkpoint, save_checkpoint

                    ckpt = load_checkpoint(version)
                    save_checkpoint(version, ckpt.model, ckpt.manifest)
                breaker(version)
                r = await client.post("/v1/models/toy/reload", headers=admin)
                assert r.status_code == 409, (kind, r.text)
                assert "still serving version 1" in r.json()["error"]
                assert any(w in r.json()["error"].lower() for w in words), (kind, r.text)
                ok = await client.post(PREDICT, json=BODY)
                assert ok.status_code == 200 and ok.json()["model_version"] == "1"
                assert (await client.get("/readyz")).status_code == 200
                shutil.rmtree(version)
        refused = [json.loads(line) for line in lines if '"model reload refused"' in line]
        assert [r["version"] for r in refused] == [str(i) for i in range(2, 2 + len(BREAKERS))]
        assert all(r["serving"] == "1" and r["model"] == "toy" for r in refused)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_model_whose_compute_raises_is_503_for_that_model_only(
    serve_app: ServeApp, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clone(repo, "toy-b", "1")
    async with serve_app() as client:
        state = client.app.state.lrbnn  # type: ignore[attr-defined]
        runtime = state.repository.get("toy").runtime

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        monkeypatch.setattr(runtime, "predict", broken)
        with captured_logs() as lines:
            rs = await asyncio.gather(*(client.post(PREDICT, json=BODY) for _ in range(4)))
        assert [r.status_code for r in rs] == [503] * 4
        assert all(
            r.headers.get("retry-after") == "1" and "failed to compute" in r.json()["error"] for r in rs
        )
        infer = {
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [70, 90, 1, 0]}]
        }
        assert (await client.post("/v2/models/toy/infer", json=infer)).status_code == 503
        assert (await client.post("/v1/models/toy-b:predict", json=BODY)).status_code == 200
        assert (await client.post("/v2/models/toy-b/infer", json=infer)).status_code == 200
        assert (await client.get("/livez")).status_code == 200
        assert any('"batch failed"' in line and '"model":"toy"' in line for line in lines)
        scrape = (await client.get("/metrics")).text
        assert metric_value(scrape, "lrbnn_requests_rejected_total", model="toy", reason="model_error") == 5.0
        assert metric_value(scrape, "lrbnn_inflight_requests", model="toy") == 0.0
        monkeypatch.undo()  # the fault clears: the same process answers again
        assert (await client.post(PREDICT, json=BODY)).status_code == 200


# -- real server: disconnects and SIGTERM ------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_repo_module(tmp_path_factory: pytest.TempPathFactory, toy_checkpoint: Path) -> Path:
    return toy.make_repository(tmp_path_factory.mktemp("faults") / "models", toy_checkpoint)


def _raw_request(port: int, body: bytes, send_bytes: int, wait_s: float) -> None:
    """Open a socket, send the headers and ``send_bytes`` of ``body``, wait, then vanish."""
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body[:send_bytes])
        time.sleep(wait_s)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vanishing_clients_leak_no_slot(toy_repo_module: Path, tmp_path: Path) -> None:
    """Clients that vanish mid-body, while queued and while computing: afterwards nothing is in flight,
    nothing is queued, the full queue capacity is available and no 5xx was recorded."""
    # admission by estimated wait off: the end of the test checks that all 8 queue slots are free again,
    # which the wait budget would turn into 429s for some of 8 simultaneous heavy requests
    env = {"LRBNN_MAX_QUEUE": "8", "LRBNN_MAX_QUEUE_WAIT_MS": "0"}
    srv = ServerProcess(toy_repo_module, tmp_path / "server.log", env=env)
    try:
        srv.wait_ready()
        heavy = json.dumps({"instances": [toy.instance()] * 256, "parameters": {"samples": 512}}).encode()
        threads = [
            # half a body, then gone (the server is waiting for the rest)
            *(threading.Thread(target=_raw_request, args=(srv.port, heavy, 100, 0.3)) for _ in range(6)),
            # the whole body, then gone while queued or computing
            *(
                threading.Thread(target=_raw_request, args=(srv.port, heavy, len(heavy), 0.5))
                for _ in range(6)
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        inflight = 'lrbnn_inflight_requests{model="toy"}'
        deadline = time.monotonic() + 60
        while srv.metric(inflight) != 0.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.metric(inflight) == 0.0
        # the whole queue is free again: 8 concurrent requests are all admitted
        with httpx.Client(timeout=120) as client:
            results: list[int] = []

            def call() -> None:
                results.append(client.post(srv.url + PREDICT, json=BODY).status_code)

            workers = [threading.Thread(target=call) for _ in range(8)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(120)
        assert results == [200] * 8, results
        scrape = httpx.get(srv.url + "/metrics", timeout=10).text
        assert 'code="500"' not in scrape and '"unhandled error"' not in srv.log_text()
        gone = srv.metric('lrbnn_requests_rejected_total{model="toy",reason="client_disconnected"}')
        assert gone is not None and gone >= 6, gone  # at least the six half bodies
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_under_load_loses_no_admitted_request(toy_repo_module: Path, tmp_path: Path) -> None:
    """Eight clients send back-to-back requests (a fresh connection each, with an X-Request-ID) and
    SIGTERM lands in the middle. Every request the server's log shows answered was received by its
    client with that status; every client saw 200, a 503 with Retry-After (draining), a 429 with
    Retry-After (eight clients of 32 instances can exceed the queue-wait budget on a busy machine), or a
    refused connection."""
    srv = ServerProcess(toy_repo_module, tmp_path / "server.log", env={"LRBNN_DRAIN_TIMEOUT_S": "60"})
    outcomes: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    try:
        srv.wait_ready()
        body = {"instances": [toy.instance()] * 32, "parameters": {"samples": 256}}

        def client_loop() -> None:
            while not stop.is_set():
                rid = uuid.uuid4().hex
                try:
                    r = httpx.post(srv.url + PREDICT, json=body, headers={"x-request-id": rid}, timeout=90)
                    refusal = r.status_code in (429, 503) and r.headers.get("retry-after")
                    outcome = (
                        str(r.status_code) if r.status_code == 200 or refusal else f"bad {r.status_code}"
                    )
                except httpx.ConnectError:
                    outcome = "refused"
                except httpx.TransportError as exc:
                    outcome = f"transport {type(exc).__name__}"
                with lock:
                    outcomes[rid] = outcome
                if outcome != "200":
                    time.sleep(0.05)

        threads = [threading.Thread(target=client_loop) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while sum(o == "200" for o in list(outcomes.values())) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(90) == 0
        stop.set()
        for t in threads:
            t.join(120)
    finally:
        stop.set()
        srv.stop()
    answered = {
        rec["request_id"]: str(rec["status"])
        for rec in srv.log_records()
        if rec.get("msg") == "request" and rec.get("path") == PREDICT
    }
    lost = {
        rid: (status, outcomes.get(rid)) for rid, status in answered.items() if outcomes.get(rid) != status
    }
    assert not lost, lost  # answered by the server but not received as such by its client
    bad = {rid: o for rid, o in outcomes.items() if o not in ("200", "429", "503", "refused")}
    # a transport error is allowed only for a request the server never read (closed listen backlog)
    assert all(rid not in answered for rid in bad), bad
    codes = list(outcomes.values())
    assert codes.count("200") >= 16 and ("503" in codes or "refused" in codes), codes
