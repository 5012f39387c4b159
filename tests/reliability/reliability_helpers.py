"""A real ``lrbnn serve`` subprocess on a free loopback port (logs kept in a file), log capture for
in-process apps, and small HTTP helpers. Shared by the tests here and ``benchmarks/reliability.py``."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``lrbnn serve`` in a subprocess; stdout and stderr (JSON log lines) go to ``log_path``."""

    def __init__(
        self, repo: Path, log_path: Path, env: dict[str, str] | None = None, cpus: set[int] | None = None
    ) -> None:
        """``cpus``: pin the server (and every thread it starts) to these cores, so that a load generator
        pinned elsewhere does not take the server's CPU (benchmarks on a small machine)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LRBNN_LOG_LEVEL": "INFO", **(env or {})}
        cmd = [sys.executable, "-m", "model_core.cli", "serve", "--model-repository", str(repo)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=pin
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server never became ready:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def metric(self, series: str) -> float | None:
        """The value of one exact series line, e.g. ``lrbnn_inflight_requests{model="toy"}``."""
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return None

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        from service.logs import JsonFormatter

        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every line the ``lrbnn`` loggers write while the block runs, JSON-formatted as in production.
    Enter it after ``create_app`` (which installs the production handler)."""
    handler = _Collect()
    root = logging.getLogger("lrbnn")
    root.addHandler(handler)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
