"""Engine-free logic of deploy/smoke_test.py, plus the real container smoke test where an engine is."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
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
    assert a.target == "cpu" and a.image == "lrbnn:smoke" and a.timeout == 180 and not a.no_build
    a = smoke.parse_args(["--target", "cuda", "--no-build", "--image", "x:1", "--timeout", "5"])
    assert (a.target, a.no_build, a.image, a.timeout) == ("cuda", True, "x:1", 5)
    with pytest.raises(SystemExit):
        smoke.parse_args(["--target", "tpu"])
    with pytest.raises(SystemExit):
        smoke.parse_args(["--timeout", "0"])


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


def test_main_without_engine_reports_not_run(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def no_engine() -> None:
        raise smoke.EngineUnavailable("socket missing")

    monkeypatch.setattr(smoke, "connect", no_engine)
    assert smoke.main([]) == 0
    out = capsys.readouterr().out
    assert f"{smoke.STATUS_PREFIX} NOT RUN: no Docker engine reachable (socket missing)" in out


def test_main_reports_failure(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(smoke, "connect", lambda: object())
    monkeypatch.setattr(smoke, "run", lambda args, client: ["boom"])
    assert smoke.main(["--no-build"]) == 1
    assert f"{smoke.STATUS_PREFIX} FAILED" in capsys.readouterr().out


DOCKERFILE = """\
ARG BASE=python:3.12-slim
ARG CUDA=nvidia/cuda:12
FROM ${CUDA} AS cuda-builder
ARG BASE=ignored-after-the-first-from
FROM cuda-builder AS cuda
FROM $BASE AS builder
FROM ${BASE} AS cpu
FROM scratch AS later
"""


def test_base_images_up_to_the_target() -> None:
    """The classic builder builds every stage before the target: their bases are needed too."""
    assert smoke.base_images(DOCKERFILE, "cuda") == ["nvidia/cuda:12"]
    assert smoke.base_images(DOCKERFILE, "cpu") == ["nvidia/cuda:12", "python:3.12-slim"]
    assert smoke.base_images(DOCKERFILE, "later") == ["nvidia/cuda:12", "python:3.12-slim"]


def test_the_repository_dockerfile_names_its_bases() -> None:
    text = (smoke.REPO_ROOT / "Dockerfile").read_text()
    images = smoke.base_images(text, "cpu")
    assert images and all("$" not in image and ":" in image for image in images), images


class _Images:
    def __init__(self, present: set[str]) -> None:
        self.present = present

    def get(self, name: str) -> object:
        import docker.errors

        if name not in self.present:
            raise docker.errors.ImageNotFound(name)
        return object()


class _Api:
    def inspect_distribution(self, name: str) -> dict[str, Any]:
        raise OSError(
            'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host'
        )


class _Client:
    def __init__(self, present: set[str]) -> None:
        self.images = _Images(present)
        self.api = _Api()


def test_engine_without_registry_reports_not_run(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """An engine is up but the base image can be neither found locally nor pulled: "not run", exit 0."""
    pytest.importorskip("docker")
    monkeypatch.setattr(smoke, "connect", lambda: _Client(present=set()))
    monkeypatch.setattr(smoke, "run", lambda args, client: pytest.fail("built without a base image"))
    assert smoke.main([]) == 0
    out = capsys.readouterr().out
    assert f"{smoke.STATUS_PREFIX} NOT RUN: no image registry reachable (base image " in out
    assert "no such host" in out


def test_local_base_images_need_no_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("docker")
    images = smoke.base_images((smoke.REPO_ROOT / "Dockerfile").read_text(), "cpu")
    smoke.ensure_base_images(_Client(present=set(images)), images)  # no registry asked: no error
    with pytest.raises(smoke.RegistryUnavailable, match=images[-1].replace(".", r"\.")):
        smoke.ensure_base_images(_Client(present=set(images[:-1])), images)


@pytest.mark.slow
def test_container_smoke() -> None:
    """The real build/run/predict/metrics cycle; reported as not run where no engine is reachable or
    where the base images can be neither found locally nor pulled (an engine without a registry)."""
    args = smoke.parse_args([])
    try:
        smoke.preflight(args, smoke.connect())
    except smoke.NotRunnable as exc:
        pytest.skip(f"not run: {exc.summary} ({exc})")
    assert smoke.main([]) == 0
