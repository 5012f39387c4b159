"""Open Inference Protocol gRPC against a real ``lrbnn serve`` process, through ``tritonclient.grpc``
unmodified: every method, BYTES text input, the same answer as V2 REST, auth, limits, and every
client error mapped to a gRPC status (never UNKNOWN). Also: the FHIR route over the same real server."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
from fhir_helpers import bundle, feverish_patient  # noqa: E402

from service.testing import ServerProcess, free_port  # noqa: E402

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "grpc-test-token"
ICU, TEXT = "icu-mortality", "review-sentiment"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    tmp = tmp_path_factory.mktemp("grpc")
    repo = tmp / "models"
    for name in (ICU, TEXT):
        shutil.copytree(ROOT / "deploy" / "models" / name, repo / name)
    port = free_port()
    env = {"LRBNN_GRPC_PORT": str(port), "LRBNN_API_TOKENS": TOKEN, "LRBNN_MAX_INSTANCES": "64"}
    srv = ServerProcess(repo, tmp / "server.log", env=env)
    try:
        srv.wait_ready()
        yield srv, f"127.0.0.1:{port}"
    finally:
        srv.stop()


AUTH = {"authorization": f"Bearer {TOKEN}"}


def _features(n: int) -> np.ndarray:
    x = np.full((n, 24), np.nan, dtype=np.float32)  # every feature missing: imputed
    x[:, 0] = np.linspace(30, 90, n)  # age
    return x


def _status(call: object) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    status = str(info.value.status())
    assert "UNKNOWN" not in status
    return status


def test_health_and_metadata_methods(server: tuple[ServerProcess, str]) -> None:
    _, target = server
    c = grpcclient.InferenceServerClient(target)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(ICU, headers=AUTH) and c.is_model_ready(TEXT, headers=AUTH)
    meta = c.get_server_metadata()
    assert meta.name == "lrbnn" and "binary_tensor_data" in meta.extensions
    model = c.get_model_metadata(ICU, headers=AUTH)
    assert model.inputs[0].name == "features" and list(model.inputs[0].shape) == [-1, 24]
    assert {o.name for o in model.outputs} >= {"mean", "variance", "epistemic", "ood", "prediction_id"}
    assert c.get_model_metadata(TEXT, headers=AUTH).inputs[0].datatype == "BYTES"
    assert "NOT_FOUND" in _status(lambda: c.get_model_metadata("nope", headers=AUTH))
    assert "NOT_FOUND" in _status(lambda: c.is_model_ready(ICU, model_version="9", headers=AUTH))


def test_infer_matches_v2_rest_with_the_same_seed(server: tuple[ServerProcess, str]) -> None:
    srv, target = server
    c = grpcclient.InferenceServerClient(target)
    x = _features(5)
    inp = grpcclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = c.infer(ICU, [inp], parameters={"samples": 32, "seed": 7}, headers=AUTH, request_id="req-1")
    assert r.get_response().id == "req-1"
    body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": list(x.shape), "data": [None] * 0}],
        "parameters": {"samples": 32, "seed": 7},
    }
    data = [None if np.isnan(v) else float(v) for v in x.ravel()]
    body["inputs"][0]["data"] = data
    rest = httpx.post(f"{srv.url}/v2/models/{ICU}/infer", json=body, headers=AUTH, timeout=30).json()
    by_name = {o["name"]: o["data"] for o in rest["outputs"]}
    for name in ("mean", "variance", "epistemic", "ood_score"):
        np.testing.assert_array_equal(r.as_numpy(name), np.asarray(by_name[name], dtype=np.float32))
    np.testing.assert_array_equal(r.as_numpy("ood"), np.asarray(by_name["ood"]))
    ids = r.as_numpy("prediction_id")
    assert ids.shape == (5,) and len({bytes(i) for i in ids}) == 5


def test_bytes_text_input(server: tuple[ServerProcess, str]) -> None:
    _, target = server
    c = grpcclient.InferenceServerClient(target)
    t = grpcclient.InferInput("text", [2], "BYTES")
    t.set_data_from_numpy(np.array([b"A gripping film.", b"A dull mess."], dtype=object))
    out = grpcclient.InferRequestedOutput("mean")
    r = c.infer(TEXT, [t], outputs=[out], parameters={"samples": 8, "seed": 1}, headers=AUTH)
    mean = r.as_numpy("mean")
    assert mean.shape == (2,) and np.all((mean > 0) & (mean < 1))
    assert r.as_numpy("variance") is None  # only what was requested


def test_client_errors_map_to_grpc_statuses(server: tuple[ServerProcess, str]) -> None:
    _, target = server
    c = grpcclient.InferenceServerClient(target)
    x = _features(2)
    good = grpcclient.InferInput("features", list(x.shape), "FP32")
    good.set_data_from_numpy(x)
    assert "UNAUTHENTICATED" in _status(lambda: c.infer(ICU, [good]))
    wrong = {"authorization": "Bearer nope"}
    assert _status(lambda: c.infer(ICU, [good], headers=wrong)) in (
        "StatusCode.UNAUTHENTICATED",
        "StatusCode.PERMISSION_DENIED",
    )
    assert "NOT_FOUND" in _status(lambda: c.infer("nope", [good], headers=AUTH))
    bad_name = grpcclient.InferInput("pixels", list(x.shape), "FP32")
    bad_name.set_data_from_numpy(x)
    assert "INVALID_ARGUMENT" in _status(lambda: c.infer(ICU, [bad_name], headers=AUTH))
    narrow = grpcclient.InferInput("features", [2, 3], "FP32")
    narrow.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    assert "INVALID_ARGUMENT" in _status(lambda: c.infer(ICU, [narrow], headers=AUTH))
    ints = grpcclient.InferInput("features", list(x.shape), "INT32")
    ints.set_data_from_numpy(np.zeros(x.shape, dtype=np.int32))
    assert "INVALID_ARGUMENT" in _status(lambda: c.infer(ICU, [ints], headers=AUTH))
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object))
    assert "INVALID_ARGUMENT" in _status(lambda: c.infer(TEXT, [text], headers=AUTH))
    assert "INVALID_ARGUMENT" in _status(
        lambda: c.infer(ICU, [good], parameters={"samples": 0}, headers=AUTH)
    )
    assert "INVALID_ARGUMENT" in _status(
        lambda: c.infer(ICU, [good], parameters={"samples": "many"}, headers=AUTH)
    )
    unknown_out = grpcclient.InferRequestedOutput("logits")
    assert "INVALID_ARGUMENT" in _status(lambda: c.infer(ICU, [good], outputs=[unknown_out], headers=AUTH))
    big = _features(65)
    many = grpcclient.InferInput("features", list(big.shape), "FP32")
    many.set_data_from_numpy(big)
    assert "RESOURCE_EXHAUSTED" in _status(lambda: c.infer(ICU, [many], headers=AUTH))
    assert "NOT_FOUND" in _status(lambda: c.infer(ICU, [good], model_version="7", headers=AUTH))
    # ... and each refusal is counted on the REST server's metrics, under the gRPC endpoint
    srv_metrics = httpx.get(server[0].url + "/metrics", headers=AUTH, timeout=10).text
    assert 'endpoint="grpc_infer"' in srv_metrics


def test_fhir_predict_on_the_real_server(server: tuple[ServerProcess, str]) -> None:
    srv, _ = server
    r = httpx.post(
        f"{srv.url}/v1/models/{ICU}:predict-fhir?seed=1",
        json=bundle(*feverish_patient()),
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["resourceType"] == "RiskAssessment"
    assert httpx.post(f"{srv.url}/v1/models/{ICU}:predict-fhir", json={}, timeout=30).status_code == 401


def test_two_workers_share_the_grpc_port(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "deploy" / "models" / ICU, repo / ICU)
    port = free_port()
    srv = ServerProcess(
        repo, tmp_path / "server.log", env={"LRBNN_GRPC_PORT": str(port), "LRBNN_WORKERS": "2"}
    )
    try:
        srv.wait_ready()
        pids = set()
        x = _features(1)
        for _ in range(12):  # fresh connections: the kernel spreads them over both workers' sockets
            c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            inp = grpcclient.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            assert c.infer(ICU, [inp], parameters={"seed": 1}).as_numpy("mean").shape == (1,)
            c.close()
        for record in srv.log_records():
            if record.get("msg") == "grpc listening":
                pids.add(record["pid"])
        assert len(pids) == 2, srv.log_text()[-2000:]
    finally:
        srv.stop()


def test_sigterm_stops_grpc_with_rest_and_exits_zero(tmp_path: Path) -> None:
    """The drain covers gRPC: after SIGTERM, gRPC answers UNAVAILABLE (or the port is closed), and the
    process exits 0 within the drain timeout even with a client channel still open."""
    import signal

    repo = tmp_path / "models"
    shutil.copytree(ROOT / "deploy" / "models" / ICU, repo / ICU)
    port = free_port()
    srv = ServerProcess(repo, tmp_path / "server.log", env={"LRBNN_GRPC_PORT": str(port)})
    try:
        srv.wait_ready()
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert c.is_server_ready()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0, srv.log_text()[-2000:]
        with pytest.raises(InferenceServerException) as info:
            c.is_server_live(client_timeout=5)
        assert "UNAVAILABLE" in str(info.value.status()) or "DEADLINE" in str(info.value.status())
    finally:
        srv.stop()
