"""Drift windows shared between worker processes through a folder (``service/monitoring/drift_share.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.monitoring.drift import DriftMonitor, WindowState
from service.monitoring.drift_share import DriftShare
from service.sync import SYNC_DIR_ENV

REF = np.linspace(0.0, 1.0, 200).tolist()


def _state(seed: int, n: int = 50) -> WindowState:
    mon = DriftMonitor(REF, 500, 0.9)
    mon.add(np.random.default_rng(seed).random(n) * 1.2)
    return mon.state()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_worker_reads_the_other_live_workers_windows(tmp_path: Path) -> None:
    me, other = DriftShare(tmp_path, pid=os.getppid()), DriftShare(tmp_path)  # both processes alive
    mine, theirs = _state(1), _state(2, 80)
    me.write("icu", "3", mine)
    other.write("icu", "3", theirs)
    got = me.others("icu", "3")
    assert len(got) == 1 and got[0].filled == 80 and np.array_equal(got[0].counts, theirs.counts)
    assert [s.filled for s in other.others("icu", "3")] == [50]  # never its own file
    other.write("icu", "3", _state(3, 20))  # a newer window replaces the older one
    assert [s.filled for s in me.others("icu", "3")] == [20]


def test_other_versions_models_and_dead_workers_are_not_merged(tmp_path: Path) -> None:
    reader = DriftShare(tmp_path, pid=os.getppid())
    DriftShare(tmp_path).write("icu", "2", _state(1))  # another version
    DriftShare(tmp_path).write("icu@2", "", _state(1))  # a name that looks like name@version
    DriftShare(tmp_path).write("icu/x", "3", _state(1))
    dead = _dead_pid()
    DriftShare(tmp_path, pid=dead).write("icu", "3", _state(2))
    assert reader.others("icu", "3") == []
    assert len(reader.others("icu", "2")) == 1 and len(reader.others("icu/x", "3")) == 1
    assert DriftShare(tmp_path / "missing").others("icu", "3") == []  # nothing shared yet


def test_forget_removes_a_dead_workers_windows_only(tmp_path: Path) -> None:
    DriftShare(tmp_path, pid=12).write("a", "1", _state(1))
    DriftShare(tmp_path, pid=12).write("b", "1", _state(1))
    DriftShare(tmp_path, pid=112).write("a", "1", _state(1))
    DriftShare(tmp_path).forget(12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a@1@112.npy"]
    DriftShare(tmp_path / "missing").forget(12)  # no folder: nothing to do


@pytest.mark.parametrize("content", [b"not numpy", b""])
def test_an_unreadable_window_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / f"icu@3@{os.getpid()}.npy").write_bytes(content)
    assert DriftShare(tmp_path, pid=os.getppid()).others("icu", "3") == []
    assert "unreadable drift window" in caplog.text


def test_after_a_reload_a_worker_discards_its_windows_of_other_versions(tmp_path: Path) -> None:
    me = DriftShare(tmp_path)
    for version in ("1", "2"):
        me.write("icu", version, _state(1))
    me.write("icu-2", "1", _state(1))  # another model whose name starts alike
    DriftShare(tmp_path, pid=12).write("icu", "1", _state(1))  # a sibling's window
    (tmp_path / f".tmp-{os.getpid()}-abc").write_bytes(b"")  # a write cut short
    me.discard_others("icu", "2")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [f".tmp-{os.getpid()}-abc", f"icu@2@{os.getpid()}.npy", f"icu-2@1@{os.getpid()}.npy", "icu@1@12.npy"]
    )
    me.forget(os.getpid())  # the supervisor, once this worker has died: its windows and strays go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["icu@1@12.npy"]


def test_only_workers_of_a_supervisor_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SYNC_DIR_ENV, raising=False)
    assert DriftShare.from_env() is None
    monkeypatch.setenv(SYNC_DIR_ENV, str(tmp_path))
    share = DriftShare.from_env()
    assert share is not None and share.folder == tmp_path / "drift" and share.pid == os.getpid()


def test_a_broken_shared_folder_never_fails_the_publish(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Monitoring never fails a request: a share that cannot be written (here its folder is a file)
    leaves each worker's gauges on its own window, with the error logged once, not every 100 ms."""
    from service.inference import InferenceService
    from service.monitoring.metrics import Metrics
    from service.settings import Settings

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    metrics = Metrics()
    metrics.register_model("m", "1", "sha", "lowrank", "2", "torch-cpu")
    service = InferenceService(Settings(), metrics, DriftShare(blocked / "drift"))
    monitor = DriftMonitor(REF, 100, 0.9)
    monitor.add(np.array([0.95, 0.1, 0.2, 0.3]))
    service.drift["m"] = monitor
    assert service.cluster is not None
    service.cluster.track("m", "1")
    for _ in range(3):
        service.publish_drift("m")
    assert metrics.child(metrics.ood_rate, "m")._value.get() == pytest.approx(0.25)
    assert caplog.text.count("drift window not shared") == 1
