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


def test_an_unreadable_window_is_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / f"icu@3@{os.getpid()}.npy").write_bytes(b"not numpy")
    assert DriftShare(tmp_path, pid=os.getppid()).others("icu", "3") == []
    assert "unreadable drift window" in caplog.text


def test_only_workers_of_a_supervisor_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(SYNC_DIR_ENV, raising=False)
    assert DriftShare.from_env() is None
    monkeypatch.setenv(SYNC_DIR_ENV, str(tmp_path))
    share = DriftShare.from_env()
    assert share is not None and share.folder == tmp_path / "drift" and share.pid == os.getpid()
