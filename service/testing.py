"""``lrbnn serve`` as a real subprocess on a free loopback port: the one harness for the tests, the
benchmarks and smoke checks (stdlib only, so it works in a torch-free or httpx-free environment).

``ServerProcess`` starts the server with its log in a file; :func:`wait_until_ready` polls a URL until it
answers 200 and fails with the log's tail as soon as the process exits, so a server that cannot start
is reported with its own error instead of a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer 200 in time; the message carries its log's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-chars:]


def wait_until_ready(
    url: str,
    proc: subprocess.Popen[Any] | None = None,
    log: Path | None = None,
    timeout_s: float = 180.0,
    interval_s: float = 0.2,
) -> float:
    """Poll ``url`` until it answers 200; returns the seconds waited.

    Raises :class:`ServerNotReady` as soon as ``proc`` has exited, or after ``timeout_s``.
    """
    start = time.monotonic()
    deadline = start + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerNotReady(f"server exited {proc.returncode} before {url} was ready:\n{_tail(log)}")
        # refused, reset, timed out, or an HTTP error status (URLError/HTTPError are OSErrors)
        with suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return time.monotonic() - start
        time.sleep(interval_s)
    raise ServerNotReady(f"{url} not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def log_records(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a server log (other lines, e.g. a traceback, skipped)."""
    records = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with suppress(ValueError):
                records.append(json.loads(line))
    return records


class ServerProcess:
    """``lrbnn serve`` in a subprocess on a free loopback port; stdout and stderr go to ``log_path`` (a
    temporary file when not given).

    ``cpus`` pins the server (and every thread it starts) to these cores, so that a load generator pinned
    elsewhere does not take the server's CPU (benchmarks on a small machine).
    """

    def __init__(
        self,
        repo: Path,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if log_path is None:  # kept after the run, for a failing test's reader
            fd, name = tempfile.mkstemp(prefix="lrbnn-serve-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LRBNN_LOG_LEVEL": "INFO", **(env or {})}
        cmd = [sys.executable, "-m", "model_core.cli", "serve", "--model-repository", str(repo)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=pin
        )

    def wait_ready(self, timeout_s: float = 180.0) -> float:
        return wait_until_ready(self.url + "/readyz", self.proc, self.log_path, timeout_s)

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        if not self._log.closed:
            self._log.flush()
        return log_records(self.log_path)

    def metrics_text(self) -> str:
        """The server's ``/metrics`` scrape."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            return resp.read().decode()

    def metric(self, series: str) -> float | None:
        """The value of one exact series line, e.g. ``lrbnn_inflight_requests{model="toy"}``."""
        for line in self.metrics_text().splitlines():
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
        """SIGKILL if still running (a test that wants a drain sends SIGTERM itself and waits)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


__all__ = ["ServerNotReady", "ServerProcess", "free_port", "log_records", "wait_until_ready"]
