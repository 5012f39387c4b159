"""``lrbnn serve --workers 2``: two server processes on one port, as a client and an operator see them.

What must hold with several workers, each tested on a real supervisor subprocess over loopback:
answers do not depend on the worker (same seed, same bytes); ``/metrics`` on any worker counts every
worker's requests; a hot reload accepted by one worker is followed by the other; SIGTERM drains every
worker with no admitted request lost and exit status 0; a worker that dies is replaced; killing the
supervisor outright takes its workers with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
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
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
import toy  # noqa: E402
from service_helpers import copy_version, metric_value, without_ids  # noqa: E402

from service.monitoring.drift import DriftMonitor  # noqa: E402
from service.testing import ServerProcess, free_port, log_records, wait_until_ready  # noqa: E402

pytestmark = pytest.mark.slow
ADMIN = "admin-secret-for-tests"


def _children(pid: int) -> list[int]:
    """Live worker processes of the supervisor ``pid`` (multiprocessing's resource tracker excluded)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == pid and b"spawn_main" in cmdline and state != "Z":
            out.append(int(entry.name))
    return sorted(out)


def _wait_all_ready(srv: ServerProcess, workers: int = 2, timeout_s: float = 120.0) -> None:
    """``wait_ready`` sees one worker; wait until every worker has logged ``ready``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len({r.get("pid") for r in srv.log_records() if r.get("msg") == "ready"}) >= workers:
            return
        time.sleep(0.2)
    raise AssertionError(f"not every worker became ready:\n{srv.log_text()[-3000:]}")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper, e.g. in a container without an init, has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _predict(url: str, seed: int = 3) -> httpx.Response:
    # a fresh connection each time, so the kernel hands requests to either worker
    return httpx.post(
        url + "/v1/models/toy:predict",
        json={"instances": [toy.instance()], "parameters": {"samples": 32, "seed": seed}},
        headers={"Connection": "close"},
        timeout=30,
    )


def _worker_pids_in_log(srv: ServerProcess) -> set[int]:
    return {
        int(r["pid"])
        for r in srv.log_records()
        if r.get("msg") == "request" and r.get("path") == "/v1/models/toy:predict" and r.get("status") == 200
    }


@pytest.fixture(scope="module")
def two_version_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy-workers")
    ckpt = toy.train_toy(root / "ckpt", root / "work")
    repo = toy.make_repository(root / "models", ckpt)
    copy_version(repo, "1", "2")  # served at start (newest); reload rolls back to 1
    return repo


@pytest.fixture
def workers_server(two_version_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"LRBNN_WORKERS": "2", "LRBNN_ADMIN_TOKEN": ADMIN, "LRBNN_MAX_QUEUE_WAIT_MS": "0"}
    srv = ServerProcess(two_version_repo, tmp_path / "server.log", env=env)
    try:
        srv.wait_ready()
        _wait_all_ready(srv)
        yield srv
    finally:
        srv.stop()


def test_two_workers_answer_alike_and_metrics_count_both(workers_server: ServerProcess) -> None:
    srv = workers_server
    assert len(_children(srv.proc.pid)) == 2
    bodies = set()
    for _ in range(30):
        r = _predict(srv.url)
        assert r.status_code == 200, r.text
        bodies.add(json.dumps(without_ids(r.json()["predictions"])))
    assert len(bodies) == 1  # same seed, same answer, whichever worker computed it
    pids = _worker_pids_in_log(srv)
    assert len(pids) == 2, f"every request went to one worker ({pids}); the aggregation is not tested"
    # any worker's /metrics sums every worker's counters
    for _ in range(3):
        assert srv.metric('lrbnn_predictions_total{model="toy"}') == 30.0
        assert srv.metric('lrbnn_inflight_requests{model="toy"}') == 0.0


def test_drift_gauges_are_over_every_workers_window(
    workers_server: ServerProcess, two_version_repo: Path
) -> None:
    """Whichever worker answers a scrape, the drift statistics and OOD rate are those of one window over
    all the answers both workers gave (checked against the OOD scores in the answers themselves)."""
    srv = workers_server
    manifest = json.loads((two_version_repo / "toy" / "2" / "manifest.json").read_text())
    reference = DriftMonitor(manifest["drift_reference"]["quantiles"], 10_000, 0.0)
    scores: list[float] = []
    flags: list[bool] = []
    for seed in range(40):  # half of them far out of distribution: a real shift
        odd = seed % 2 == 0
        instance = toy.instance(age=200.0, heart_rate=280.0, creatinine=15.0) if odd else toy.instance()
        r = httpx.post(
            srv.url + "/v1/models/toy:predict",
            json={"instances": [instance], "parameters": {"samples": 32, "seed": seed}},
            headers={"Connection": "close"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        scores.append(r.json()["predictions"][0]["ood_score"])
        flags.append(r.json()["predictions"][0]["ood"])
    assert len(_worker_pids_in_log(srv)) == 2, "every request went to one worker; nothing is merged"
    reference.add(np.asarray(scores))
    want = reference.stats()
    time.sleep(0.5)  # each worker shares its window every 0.1 s: what another merges is at most that old
    assert 0 < sum(flags) < len(flags)  # the shift is seen: a rate strictly between 0 and 1
    for _ in range(6):  # fresh connections: both workers answer scrapes
        text = httpx.get(srv.url + "/metrics", headers={"Connection": "close"}, timeout=10).text
        got = {
            stat: float(metric_value(text, "lrbnn_uncertainty_drift", model="toy", statistic=stat) or "nan")
            for stat in ("psi", "ks", "wasserstein")
        }
        assert got["ks"] == pytest.approx(want.ks, abs=1e-12)
        assert got["psi"] == pytest.approx(want.psi, rel=1e-9)
        assert got["wasserstein"] == pytest.approx(want.wasserstein, rel=1e-9)
        rate = float(metric_value(text, "lrbnn_ood_rate", model="toy") or "nan")
        assert rate == pytest.approx(sum(flags) / len(flags))


def test_reload_on_one_worker_is_followed_by_the_other(workers_server: ServerProcess) -> None:
    srv = workers_server
    assert _predict(srv.url).json()["model_version"] == "2"
    r = httpx.post(
        srv.url + "/v1/models/toy/reload",
        json={"version": "1"},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1"
    deadline = time.monotonic() + 20
    versions: list[str] = []
    while time.monotonic() < deadline:
        versions = [_predict(srv.url).json()["model_version"] for _ in range(12)]
        # both workers must have answered: a follower still reloading takes no connection meanwhile,
        # so on a busy machine the first dozen answers may all come from the worker that reloaded
        if set(versions) == {"1"} and len(_worker_pids_in_log(srv)) == 2:
            break
        time.sleep(0.2)
    assert set(versions) == {"1"}, versions
    assert len(_worker_pids_in_log(srv)) == 2
    followed = [r for r in srv.log_records() if r.get("msg") == "reloaded, following another worker"]
    assert len(followed) == 1 and followed[0]["version"] == "1"
    # the info series: version 1 served (1), version 2 left behind (0) once both workers moved
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    info = {
        line.split('version="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("lrbnn_model_info{") and 'model="toy"' in line
    }
    assert info == {"1": 1.0, "2": 0.0}


def test_dead_worker_is_replaced_unseen_and_keeps_a_rolled_back_version(
    workers_server: ServerProcess,
) -> None:
    srv = workers_server
    r = httpx.post(
        srv.url + "/v1/models/toy/reload",
        json={"version": "1"},  # a rollback from the newest version, 2
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and {_predict(srv.url).json()["model_version"] for _ in range(8)} != {
        "1"
    }:
        time.sleep(0.2)
    before = _children(srv.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    # while the replacement loads, the survivor answers everything: the new worker takes no connection
    # before its models are loaded
    codes, versions = [], set()
    new_pid = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = _predict(srv.url)
        codes.append(r.status_code)
        versions.add(r.json().get("model_version"))
        after = [p for p in _children(srv.proc.pid) if p not in before]
        if after and any(
            rec.get("msg") == "ready" and rec.get("pid") == after[0] for rec in srv.log_records()
        ):
            new_pid = after[0]
            break
    assert new_pid is not None, "no replacement worker became ready"
    assert set(codes) == {200}, codes
    # the replacement serves the published (rolled-back) version, not the newest one it would load
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and new_pid not in _worker_pids_in_log(srv):
        versions.add(_predict(srv.url).json()["model_version"])
    assert new_pid in _worker_pids_in_log(srv), "the replacement never answered"
    assert versions == {"1"}, versions
    assert any(r.get("msg") == "worker died" for r in srv.log_records())


def test_sigterm_drains_every_worker_and_exits_zero(two_version_repo: Path, tmp_path: Path) -> None:
    env = {
        "LRBNN_WORKERS": "2",
        "LRBNN_MAX_BATCH_SIZE": "4",
        "LRBNN_DRAIN_TIMEOUT_S": "60",
        "LRBNN_MAX_QUEUE_WAIT_MS": "0",
    }
    srv = ServerProcess(two_version_repo, tmp_path / "server.log", env=env)
    try:
        srv.wait_ready()
        _wait_all_ready(srv)
        workers = _children(srv.proc.pid)
        heavy = {"instances": [toy.instance()] * 512, "parameters": {"samples": 512, "seed": 1}}

        def call() -> int:
            return httpx.post(
                srv.url + "/v1/models/toy:predict", json=heavy, headers={"Connection": "close"}, timeout=90
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call) for _ in range(8)]
            in_flight = 0.0
            deadline = time.monotonic() + 30
            while in_flight < 3 and time.monotonic() < deadline:  # summed over both workers
                in_flight = srv.metric('lrbnn_inflight_requests{model="toy"}') or 0.0
            assert in_flight >= 3
            srv.proc.send_signal(signal.SIGTERM)
            codes = [f.result() for f in futures]
        # every request admitted before the signal is answered; later ones are refused cleanly (503)
        assert set(codes) <= {200, 503} and codes.count(200) >= in_flight, (in_flight, codes)
        assert srv.proc.wait(90) == 0, srv.log_text()[-3000:]
        assert not [pid for pid in workers if _alive(pid)]
        drained = [r for r in srv.log_records() if r.get("msg") == "drained"]
        assert len(drained) == 2
    finally:
        srv.stop()


def test_killing_the_supervisor_takes_the_workers_with_it(two_version_repo: Path, tmp_path: Path) -> None:
    srv = ServerProcess(two_version_repo, tmp_path / "server.log", env={"LRBNN_WORKERS": "2"})
    try:
        srv.wait_ready()
        workers = _children(srv.proc.pid)
        assert len(workers) == 2
        srv.proc.kill()
        srv.proc.wait(10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        alive = [pid for pid in workers if _alive(pid)]
        assert not alive, f"workers outlived the supervisor: {alive}"
    finally:
        srv.stop()


def test_sigterm_while_workers_still_load_exits_zero(two_version_repo: Path, tmp_path: Path) -> None:
    """A signal before the workers serve (they load first) ends them with nothing lost: exit status 0."""
    srv = ServerProcess(two_version_repo, tmp_path / "server.log", env={"LRBNN_WORKERS": "2"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_children(srv.proc.pid)) < 2:
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)  # the workers are starting their interpreters or loading
        assert srv.proc.wait(90) == 0, srv.log_text()[-3000:]
    finally:
        srv.stop()


def test_settings_made_in_code_reach_every_worker(two_version_repo: Path, tmp_path: Path) -> None:
    """The supervisor hands its ``Settings`` object to each worker: a value set in code (here
    ``max_samples=7``, not in the environment) holds on both workers, as it does on one server."""
    port = free_port()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from service.settings import Settings\n"
        "from service.workers import run_workers\n"
        f"settings = Settings(model_repository=Path({str(two_version_repo)!r}), max_samples=7)\n"
        f"sys.exit(run_workers(settings, '127.0.0.1', {port}, 2))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRBNN_")}
    log = tmp_path / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=fh, stderr=fh
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url + "/readyz", proc, log)
        deadline = time.monotonic() + 120
        while len({r.get("pid") for r in log_records(log) if r.get("msg") == "ready"}) < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        body = {"instances": [toy.instance()], "parameters": {"samples": 8, "seed": 1}}
        for _ in range(20):  # new connections, spread over both workers by the kernel
            r = httpx.post(
                url + "/v1/models/toy:predict", json=body, headers={"Connection": "close"}, timeout=30
            )
            assert r.status_code == 422 and "between 1 and 7" in r.text, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
