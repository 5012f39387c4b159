"""Engine-free logic of deploy/smoke_test.py, plus the real container smoke test where an engine is."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import load_script

smoke = load_script("smoke_test")


class _Readyz(http.server.BaseHTTPRequestHandler):
    """Answers 503 for the first `not_ready` GETs, then 200 (a model loading, then ready)."""

    not_ready = 3
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        status = 503 if type(self).calls <= type(self).not_ready else 200
        body = b'{"status":"loading"}' if status == 503 else b'{"status":"ready"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[str]:
    _Readyz.calls = 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/readyz"
    finally:
        srv.shutdown()
        srv.server_close()


def test_parse_args_defaults_and_errors() -> None:
    a = smoke.parse_args([])
    assert a.images == ["cpu", "slim"] and a.timeout == 120 and not a.no_build and not a.no_compose
    a = smoke.parse_args(["--images", "slim", "--no-build", "--timeout", "5"])
    assert (a.images, a.no_build, a.timeout) == (["slim"], True, 5)
    for bad in (["--images", "cuda"], ["--images", ","], ["--timeout", "0"]):
        with pytest.raises(SystemExit):
            smoke.parse_args(bad)


def test_image_tags_follow_the_package_version() -> None:
    tags = smoke.image_tags()
    assert tags["cpu"] == f"lrbnn:{smoke.version()}-cpu" and tags["slim"].endswith("-slim")


def test_wait_ready_polls_until_200(readyz_server: str) -> None:
    waited = smoke.wait_ready(readyz_server, timeout=10, interval=0.05)
    assert _Readyz.calls == 4 and waited < 10


def test_wait_ready_times_out(readyz_server: str) -> None:
    _Readyz.not_ready = 10**6
    try:
        with pytest.raises(TimeoutError, match="HTTP 503"):
            smoke.wait_ready(readyz_server, timeout=0.3, interval=0.05)
    finally:
        _Readyz.not_ready = 3


def test_wait_ready_connection_refused_is_retried() -> None:
    """Nothing listening yet (container starting): keep polling, report the error at the timeout."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(TimeoutError, match="not ready"):
        smoke.wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=0.3, interval=0.05)


def test_check_prediction() -> None:
    good = {"ood": False, "mean": 0.2, "variance": 0.1, "epistemic": 0.001, "ood_score": 0.001}
    ok = {"model_name": "m", "predictions": [good, good]}
    assert smoke.check_prediction(ok, 2, "m") == []
    assert smoke.check_prediction([], 2, "m")
    assert any(
        "expected 2" in p for p in smoke.check_prediction({"model_name": "m", "predictions": [good]}, 2, "m")
    )
    bad = dict(good, mean=1.5)
    assert any(
        "outside" in p for p in smoke.check_prediction({"model_name": "m", "predictions": [bad]}, 1, "m")
    )
    missing = {k: v for k, v in good.items() if k != "ood"}
    assert any(
        "lacks" in p for p in smoke.check_prediction({"model_name": "x", "predictions": [missing]}, 1, "m")
    )


def test_check_metrics() -> None:
    text = "\n".join(f'{m}{{model="icu"}} 1' for m in smoke.REQUIRED_METRICS)
    assert smoke.check_metrics(text, "icu") == []
    problems = smoke.check_metrics(text.replace("lrbnn_ood_rate", "other"), "icu")
    assert problems == ["/metrics lacks a lrbnn_ood_rate sample for model 'icu'"]


def test_example_instance() -> None:
    manifest = {
        "input_schema": {"preprocessing": {"features": [{"name": "a", "impute": 1.0}, {"name": "b"}]}}
    }
    assert smoke.example_instance(manifest) == {"a": 1.0}


def test_diff_answers() -> None:
    a = {"predictions": [{"mean": 0.25, "prediction_id": "x", "ood": False}], "samples": 64}
    assert (
        smoke.diff_answers(
            a, {"predictions": [{"mean": 0.25 + 1e-9, "prediction_id": "y", "ood": False}], "samples": 64}
        )
        == []
    )
    assert smoke.diff_answers(
        a, {"predictions": [{"mean": 0.26, "prediction_id": "x", "ood": False}], "samples": 64}
    ) == [".predictions[0].mean: 0.25 vs 0.26"]
    assert smoke.diff_answers(a, {**a, "samples": 65}) == [".samples: 64 vs 65"]
    assert smoke.diff_answers(a, {"predictions": [], "samples": 64}) == [".predictions: 1 items vs 0"]
    assert smoke.diff_answers({"ood": True}, {"ood": 1}) == [".ood: True vs 1"]
    assert smoke.diff_answers({"a": 1}, {}) == [".a: only in the first"]
    # V2: the prediction_id output differs on every answer by design; every other output is compared
    ids = {"name": "prediction_id", "datatype": "BYTES", "shape": [1], "data": ["a" * 32]}
    mean = {"name": "mean", "datatype": "FP32", "shape": [1], "data": [0.5]}
    v2 = {"outputs": [mean, ids]}
    assert smoke.diff_answers(v2, {"outputs": [mean, {**ids, "data": ["b" * 32]}]}) == []
    assert smoke.diff_answers(v2, {"outputs": [{**mean, "data": [0.6]}, ids]}) == [
        ".outputs[0].data[0]: 0.5 vs 0.6"
    ]


def test_counter_value() -> None:
    text = (
        "# TYPE lrbnn_predictions_total counter\n"
        'lrbnn_predictions_total{model="icu"} 3.0\n'
        'lrbnn_predictions_created{model="icu"} 1.7e9\n'
        'lrbnn_predictions_total{model="other"} 5.0\n'
    )
    assert smoke.counter_value(text, "lrbnn_predictions_total", "icu") == 3.0
    assert smoke.counter_value(text, "lrbnn_predictions_total", "none") == 0.0


def test_v2_request_orders_features_and_indexes_categories() -> None:
    meta = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "parameters": {"feature_names": ["sex", "age"], "categories": {"sex": ["female", "male"]}},
    }
    body = smoke.v2_request(meta, [{"age": 60, "sex": "male"}, {"age": 70.5, "sex": "female"}], 3, 8)
    assert body["inputs"][0]["shape"] == [2, 2] and body["inputs"][0]["data"] == [1.0, 60.0, 0.0, 70.5]
    assert body["parameters"] == {"samples": 8, "seed": 3}


def test_main_without_engine_reports_not_run(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def no_engine() -> None:
        raise smoke.EngineUnavailable("socket missing")

    monkeypatch.setattr(smoke, "connect", no_engine)
    assert smoke.main([]) == 0
    out = capsys.readouterr().out
    assert f"{smoke.STATUS_PREFIX} NOT RUN: no Docker engine reachable (socket missing)" in out


def test_main_reports_failure(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(smoke, "connect", lambda: "20.10")
    monkeypatch.setattr(smoke, "image_present", lambda name: False)

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(smoke, "smoke_image", broken)
    assert smoke.main(["--no-build", "--no-compose"]) == 1
    out = capsys.readouterr().out
    assert f"{smoke.STATUS_PREFIX} FAILED" in out and "boom" in out
    line = next(line for line in out.splitlines() if line.startswith('{"container_test"'))
    assert json.loads(line)["container_test"]["status"] == "failed"


def test_engine_without_registry_or_mmdebstrap_reports_not_run(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    """An engine is up, no registry answers and no local base can be made (no cached base tarball
    either: an empty cache folder, whatever an earlier ``make container-test`` left): "not run", exit 0."""
    monkeypatch.setattr(smoke, "connect", lambda: "20.10")
    monkeypatch.setattr(smoke, "image_present", lambda name: False)
    monkeypatch.setattr(smoke, "pullable", lambda name: "lookup registry-1.docker.io: no such host")
    monkeypatch.setattr(smoke.shutil, "which", lambda name: None)
    assert smoke.main(["--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{smoke.STATUS_PREFIX} NOT RUN: no image registry reachable (cannot make " in out
    assert "mmdebstrap not installed" in out


def test_the_repository_dockerfile_builds_cpu_without_cuda() -> None:
    """The classic builder builds every stage before the target: nothing before `cpu` may need CUDA."""
    text = (smoke.REPO_ROOT / "Dockerfile").read_text()
    code = [line for line in text.split("AS cpu")[0].lower().splitlines() if not line.startswith("#")]
    assert not [line for line in code if "cuda" in line]
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms[-1].endswith("AS cpu") and any(line.endswith("AS slim") for line in froms)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_container_smoke() -> None:
    """The real cycle (make container-test): both images, every check, compose with Prometheus;
    reported as not run where no engine is reachable or no base image can be had."""
    res = subprocess.run(
        [sys.executable, str(smoke.REPO_ROOT / "deploy" / "smoke_test.py")],
        capture_output=True,
        text=True,
        timeout=1750,
    )
    out = res.stdout + res.stderr
    print(out[-3000:])
    if f"{smoke.STATUS_PREFIX} NOT RUN" in out:
        pytest.skip(out.strip().splitlines()[-1])
    assert res.returncode == 0 and f"{smoke.STATUS_PREFIX} PASSED" in out, out[-3000:]
