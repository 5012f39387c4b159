"""The prediction store with the real server (``lrbnn serve`` subprocesses): what survives a restart, an
acknowledged outcome surviving a SIGKILL, two workers on one SQLite file, and PostgreSQL end to end."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.testing import ServerProcess, free_port
from tests.integration.test_service_process import toy, toy_repo  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
PREDICT, FEEDBACK = "/v1/models/toy:predict", "/v1/models/toy/feedback"


def _predict(url: str, n: int) -> list[str]:
    body = {"instances": [toy.instance(age=30.0 + i) for i in range(n)], "parameters": {"samples": 8}}
    r = httpx.post(url + PREDICT, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return [p["prediction_id"] for p in r.json()["predictions"]]


def _feedback(url: str, ids: list[str], value: int = 1) -> dict[str, list[str]]:
    """As a client does: a 503 with Retry-After (the store still connecting after /readyz, which does not
    wait for it) is retried after the advised delay, for at most a minute."""
    body = {"outcomes": [{"prediction_id": i, "value": value} for i in ids]}
    deadline = time.monotonic() + 60
    while True:
        r = httpx.post(url + FEEDBACK, json=body, timeout=30)
        if r.status_code != 503 or "retry-after" not in r.headers or time.monotonic() > deadline:
            break
        time.sleep(float(r.headers["retry-after"]))
    assert r.status_code == 200, r.text
    return r.json()


def test_store_survives_a_restart_and_an_outcome_survives_sigkill(toy_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    env = {"LRBNN_STATE_DIR": str(tmp_path / "state")}
    first = ServerProcess(toy_repo, env=env)
    try:
        first.wait_ready()
        ids = _predict(first.url, 6)
        assert _feedback(first.url, ids[:3])["accepted"] == ids[:3]
        first.proc.send_signal(signal.SIGTERM)  # a drain: what was answered is written before exit
        assert first.proc.wait(30) == 0
    finally:
        first.stop()
    second = ServerProcess(toy_repo, env=env)
    try:
        second.wait_ready()
        got = _feedback(second.url, ids)
        assert got["duplicate"] == ids[:3] and got["accepted"] == ids[3:]  # both survived the restart
        fresh = _predict(second.url, 2)
        acked = _feedback(second.url, fresh, value=0)
        assert acked["accepted"] == fresh
        second.proc.send_signal(signal.SIGKILL)  # right after the acknowledgement: no drain, no flush
        second.proc.wait(10)
    finally:
        second.stop()
    con = sqlite3.connect(tmp_path / "state" / "predictions.sqlite")
    rows = dict(con.execute("SELECT prediction_id, value FROM outcomes").fetchall())
    assert {i: rows.get(i) for i in fresh} == {i: 0.0 for i in fresh}
    assert len(rows) == 8
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_two_workers_share_one_store(toy_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    srv = ServerProcess(toy_repo, env={"LRBNN_STATE_DIR": str(tmp_path / "state"), "LRBNN_WORKERS": "2"})
    try:
        srv.wait_ready()
        ids = [i for _ in range(20) for i in _predict(srv.url, 2)]  # spread over both workers
        got = [_feedback(srv.url, [i]) for i in ids]  # each outcome may land on the other worker
        assert [g["accepted"] for g in got] == [[i] for i in ids]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = httpx.get(srv.url + "/metrics").text
            if 'lrbnn_outcomes_total{model="toy"} 40.0' in text:
                break
            time.sleep(0.2)
        assert 'lrbnn_outcomes_total{model="toy"} 40.0' in text
        assert 'lrbnn_realized_performance{metric="accuracy",model="toy"}' in text
        # the per-feature drift series, over both workers' windows merged
        assert 'lrbnn_feature_drift{feature="age",model="toy",statistic="ks"}' in text
    finally:
        srv.stop()


# -- PostgreSQL --------------------------------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on loopback (trust auth), or skip with the reason."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="lrbnn-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres user
        runuser = shutil.which("runuser")
        try:
            import pwd

            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the cluster as")
        if runuser is None:
            pytest.skip("running as root and no runuser to drop to the postgres user")
        os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "lrbnn"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=on"
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"PostgreSQL could not start: {exc} {detail.decode(errors='replace')[-300:]}")
    try:
        yield f"postgresql+psycopg://lrbnn@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60
            )
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_end_to_end(toy_repo: Path, postgres_url: str) -> None:  # noqa: F811
    from sqlalchemy import create_engine, text

    srv = ServerProcess(toy_repo, env={"LRBNN_STORE_URL": postgres_url})
    try:
        srv.wait_ready()
        ids = _predict(srv.url, 5)
        got = _feedback(srv.url, ids[:4])
        assert got["accepted"] == ids[:4]
        assert _feedback(srv.url, ids[:1])["duplicate"] == ids[:1]
        text_metrics = httpx.get(srv.url + "/metrics").text
        assert 'lrbnn_outcomes_total{model="toy"} 4.0' in text_metrics
        assert 'lrbnn_store_predictions_total{model="toy",result="stored"} 5.0' in text_metrics
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
    finally:
        srv.stop()
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 5
        assert conn.execute(text("SELECT count(*) FROM outcomes")).scalar_one() == 4
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0002"
    engine.dispose()
