"""The real thing: ``lrbnn serve`` as a subprocess on a free loopback port.

Covers start-up to ``/readyz``, V1 and V2 (with tritonclient when installed), a SIGTERM drain with
requests in flight (none may fail, the exit status must be 0) and, when the bundled ICU model and the
SUPPORT2 data are present, predictions for real patients.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))
import toy  # noqa: E402

from service.testing import ServerProcess, log_records  # noqa: E402

pytestmark = pytest.mark.slow
ICU_REPO = ROOT / "deploy" / "models"
ICU_MODEL = "icu-mortality"


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy-int")
    ckpt = toy.train_toy(root / "ckpt", root / "work")
    return toy.make_repository(root / "models", ckpt)


@pytest.fixture(scope="module")
def server(toy_repo: Path) -> Iterator[ServerProcess]:
    # admission by estimated wait off: these tests hold several slow requests in the queue on purpose
    srv = ServerProcess(toy_repo, env={"LRBNN_MAX_QUEUE_WAIT_MS": "0"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_v1_predict_over_http(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/v1/models/toy:predict",
        json={"instances": [toy.instance()], "parameters": {"samples": 16, "seed": 1}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["imputed"] == []
    assert httpx.get(server.url + "/livez").status_code == 200
    assert "lrbnn_model_info" in httpx.get(server.url + "/metrics").text


def test_v2_with_tritonclient(server: ServerProcess) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("toy")
    meta = client.get_model_metadata("toy")
    assert meta["inputs"][0]["shape"] == [-1, 4]
    x = np.array([[70.0, 110.0, 1.5, 1.0], [40.0, 80.0, 0.9, 0.0]], dtype=np.float32)
    for binary in (True, False):
        inp = httpclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [
            httpclient.InferRequestedOutput(n, binary_data=binary)
            for n in ("mean", "variance", "epistemic", "ood_score", "ood", "prediction_id")
        ]
        res = client.infer("toy", [inp], outputs=outs, parameters={"seed": 3, "samples": 32})
        mean, ood = res.as_numpy("mean"), res.as_numpy("ood")
        ids = [v.decode() if isinstance(v, bytes) else str(v) for v in res.as_numpy("prediction_id")]
        assert len(ids) == len(set(ids)) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        assert mean.shape == (2,) and mean.dtype == np.float32 and ((mean > 0) & (mean < 1)).all()
        assert ood.dtype == np.bool_
    # the same call without requested outputs uses the contract's default set
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("toy", [inp])
    assert res.as_numpy("epistemic").shape == (2,)


def _metric(srv: ServerProcess, series: str) -> float:
    """The value of one series (name and labels exactly as exported), 0 when absent."""
    for line in httpx.get(srv.url + "/metrics", timeout=10).text.splitlines():
        if line.split(" ")[0] == series:
            return float(line.split()[-1])
    return 0.0


def test_disconnected_client_frees_its_slot(server: ServerProcess) -> None:
    """A client that gives up while queued leaves the queue (uvicorn's disconnect) and costs no compute."""
    heavy = {"instances": [toy.instance()] * 512, "parameters": {"samples": 1024, "seed": 1}}
    predicted = 'lrbnn_predictions_total{model="toy"}'
    gone = 'lrbnn_requests_rejected_total{model="toy",reason="client_disconnected"}'
    before, gone_before = _metric(server, predicted), _metric(server, gone)

    def call() -> int:
        return httpx.post(server.url + "/v1/models/toy:predict", json=heavy, timeout=120).status_code

    def impatient() -> str:
        try:
            httpx.post(server.url + "/v1/models/toy:predict", json={"instances": [{}]}, timeout=0.5)
        except httpx.TimeoutException:
            return "gave up"
        return "answered"

    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(call) for _ in range(3)]
        _wait_in_flight(server, at_least=3)
        assert pool.submit(impatient).result() == "gave up"
        assert [f.result() for f in busy] == [200, 200, 200]
    time.sleep(0.2)
    assert _metric(server, gone) == gone_before + 1
    assert _metric(server, predicted) == before + 3 * 512  # the abandoned request was never computed
    assert _metric(server, 'lrbnn_inflight_requests{model="toy"}') == 0.0


def _wait_in_flight(srv: ServerProcess, at_least: int, timeout_s: float = 60.0) -> int:
    """Poll /metrics until ``at_least`` requests are in flight; returns how many were."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in httpx.get(srv.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith('lrbnn_inflight_requests{model="toy"}'):
                value = int(float(line.split()[-1]))
                if value >= at_least:
                    return value
        time.sleep(0.01)
    raise AssertionError(f"never {at_least} requests in flight together")


def _idle_connection_closed_after(url: str, wait_s: float) -> bool:
    """Send one request on a raw keep-alive connection, idle ``wait_s``, and say whether the server
    closed the connection meanwhile (recv returns b"" on a closed one)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in sock.recv(4096).split(b"\r\n", 1)[0]
        time.sleep(wait_s)
        sock.settimeout(0.5)
        try:
            return sock.recv(4096) == b""
        except TimeoutError:
            return False


def test_a_serving_process_freezes_its_loaded_heap(server: ServerProcess) -> None:
    """``service.heap.settle`` ran once the models were loaded: the log says how many objects it froze
    (the collector no longer walks them; in-process test apps leave it off)."""
    settled = [r for r in log_records(server.log_path) if r.get("msg") == "heap settled"]
    assert len(settled) == 1, settled
    assert settled[0]["frozen_objects"] > 10_000  # torch alone leaves far more than that


def test_keep_alive_setting_reaches_the_http_server(server: ServerProcess, toy_repo: Path) -> None:
    """LRBNN_KEEP_ALIVE_S is uvicorn's keep-alive: 1 s closes an idle connection that the 5 s default
    keeps open (a load balancer reusing it would otherwise meet a closed socket)."""
    assert not _idle_connection_closed_after(server.url, 2.0)
    short = ServerProcess(toy_repo, env={"LRBNN_KEEP_ALIVE_S": "1"})
    try:
        short.wait_ready()
        assert _idle_connection_closed_after(short.url, 2.0)
    finally:
        short.stop()


def test_sigterm_drains_in_flight_requests_and_exits_zero(toy_repo: Path) -> None:
    srv = ServerProcess(
        toy_repo,
        env={"LRBNN_MAX_BATCH_SIZE": "4", "LRBNN_DRAIN_TIMEOUT_S": "60", "LRBNN_MAX_QUEUE_WAIT_MS": "0"},
    )
    try:
        srv.wait_ready()
        heavy = {"instances": [toy.instance()] * 512, "parameters": {"samples": 512, "seed": 1}}

        def call() -> int:
            return httpx.post(srv.url + "/v1/models/toy:predict", json=heavy, timeout=60).status_code

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(call) for _ in range(6)]
            in_flight = _wait_in_flight(srv, at_least=3)
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            try:
                late = httpx.post(srv.url + "/v1/models/toy:predict", json={"instances": [{}]}, timeout=5)
                assert late.status_code == 503 and late.headers.get("retry-after")
                assert httpx.get(srv.url + "/readyz", timeout=5).status_code == 503
            except httpx.TransportError:
                pass  # already drained and closed: also a refusal
            codes = [f.result() for f in futures]
        # every request admitted before the signal finishes; later ones are refused cleanly (503)
        assert set(codes) <= {200, 503} and codes.count(200) >= in_flight, (in_flight, codes)
        assert srv.proc.wait(60) == 0, srv.log_text()
    finally:
        srv.stop()


def _support2_rows(data_dir: Path, n: int) -> list[dict[str, object]]:
    import pandas as pd

    from model_core.data.icu import ICU_FEATURES

    frame = pd.read_csv(data_dir / "support2" / "support2.csv").head(n)
    rows = []
    for rec in frame[ICU_FEATURES].to_dict(orient="records"):
        rows.append(
            {k: None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
        )
    return rows


def _as_tensor(
    rows: list[dict[str, object]], names: list[str], cats: dict[str, list[str]]
) -> list[list[object]]:
    """V1 rows -> V2 rows: categories become their index, missing or unknown values null."""
    out = []
    for row in rows:
        values: list[object] = []
        for name in names:
            v = row.get(name)
            if name in cats:
                v = cats[name].index(str(v)) if v is not None and str(v) in cats[name] else None
            values.append(v)
        out.append(values)
    return out


@pytest.mark.realdata
def test_icu_model_on_real_support2_patients() -> None:
    repo = Path(os.environ.get("LRBNN_TEST_ICU_REPOSITORY", ICU_REPO))
    if not any((repo / ICU_MODEL).glob("*/manifest.json")):
        pytest.skip(f"no bundled model under {repo / ICU_MODEL}")
    data_dir = os.environ.get("LRBNN_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "support2" / "support2.csv").is_file():
        pytest.skip("LRBNN_DATA_DIR with support2/support2.csv is not available")
    rows = _support2_rows(Path(data_dir), 20)
    srv = ServerProcess(repo)
    try:
        srv.wait_ready(180)
        r = httpx.post(
            srv.url + f"/v1/models/{ICU_MODEL}:predict",
            json={"instances": rows, "parameters": {"seed": 0}},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == 20 and all(0.0 <= p["mean"] <= 1.0 for p in preds)
        assert any(p["imputed"] for p in preds)  # SUPPORT2 has gaps; the answer says which were filled
        meta = httpx.get(srv.url + f"/v2/models/{ICU_MODEL}").json()
        names, cats = meta["parameters"]["feature_names"], meta["parameters"]["categories"]
        data = _as_tensor(rows, names, cats)
        body = {
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [20, len(names)], "data": data}],
            "parameters": {"seed": 0},
        }
        r2 = httpx.post(srv.url + f"/v2/models/{ICU_MODEL}/infer", json=body, timeout=60)
        assert r2.status_code == 200, r2.text
        mean = next(o for o in r2.json()["outputs"] if o["name"] == "mean")["data"]
        assert mean == pytest.approx([p["mean"] for p in preds], abs=0.02)  # FP32 inputs: tiny rounding
    finally:
        srv.stop()
