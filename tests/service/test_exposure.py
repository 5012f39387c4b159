"""Secure by default: no open server on a reachable address unless the operator says so explicitly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.settings import Settings, UnauthenticatedExposure, is_loopback

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "deploy" / "models"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("lrbnn.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_reachable_without_tokens_is_refused_naming_the_variable() -> None:
    with pytest.raises(UnauthenticatedExposure, match="LRBNN_ALLOW_UNAUTHENTICATED=true") as info:
        Settings(api_tokens=SecretStr("")).check_exposure("0.0.0.0")
    assert "\n" not in str(info.value) and "LRBNN_API_TOKENS" in str(info.value)


def test_tokens_loopback_or_explicit_opt_in_are_allowed(tmp_path: Path) -> None:
    Settings(api_tokens=SecretStr("")).check_exposure("127.0.0.1")
    Settings(api_tokens=SecretStr("s3cret")).check_exposure("0.0.0.0")
    token_file = tmp_path / "tokens"
    token_file.write_text("# one a line\nfrom-file\n")
    Settings(api_tokens_file=token_file).check_exposure("0.0.0.0")
    Settings(allow_unauthenticated=True).check_exposure("0.0.0.0")
    # a token file holding only comments is no token
    token_file.write_text("# none yet\n\n")
    with pytest.raises(UnauthenticatedExposure):
        Settings(api_tokens_file=token_file).check_exposure("::")


def test_allow_unauthenticated_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRBNN_ALLOW_UNAUTHENTICATED", "true")
    assert Settings().allow_unauthenticated is True
    monkeypatch.setenv("LRBNN_ALLOW_UNAUTHENTICATED", "maybe")
    with pytest.raises(ValueError, match="allow_unauthenticated"):
        Settings()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRBNN_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _serve(host: str, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "model_core.cli", "serve", "--model-repository", str(REPO)]
    return subprocess.Popen(
        [*cmd, "--host", host, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_cli_refuses_all_interfaces_without_tokens() -> None:
    """The real command: exit 2 at once, one line on stderr, before any model is loaded."""
    proc = _serve("0.0.0.0", 1, _env())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines == [lines[0]] and "LRBNN_ALLOW_UNAUTHENTICATED" in lines[0], out


def test_cli_serves_all_interfaces_when_opted_in() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = _serve("0.0.0.0", port, _env(LRBNN_ALLOW_UNAUTHENTICATED="true"))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "no /livez within 60 s"
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
