"""One drift window over every worker process (``LRBNN_WORKERS`` > 1).

Each worker sees its share of the traffic, so its own window is a subsample; the drift gauges of a
scrape, answered by whichever worker, must describe the whole service's recent traffic and read the
same whichever worker answers. A window is summarised exactly by its per-bin counts and four sums
(:class:`~service.monitoring.drift.WindowState`), and windows over the same reference merge by
adding those. So every worker writes its state (~8 KB for a 1,000-quantile reference) to a folder the
supervisor shares, every 100 ms when it has changed (``InferenceService.start_sharing``) and on every
scrape it answers, and computes the statistics over its own state plus the other live workers' latest
ones (at most ~100 ms old).

Files, not shared memory: the workers share nothing else, a write is one atomic ``os.replace``, and a
dead worker's file is skipped (its process is gone) and removed by the supervisor. A file is keyed by
model, version and process id, so a hot reload's new version never mixes with the old one's window.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np

from service.atomic import write_atomic
from service.monitoring.drift import WindowState
from service.sync import SYNC_DIR_ENV

log = logging.getLogger("lrbnn.service.drift")

SUFFIX = ".npy"


class SharedState(Protocol):
    """A window summary that merges by addition: ``WindowState``, ``FeatureWindowState``."""

    def to_array(self) -> np.ndarray: ...


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's (cannot happen between our workers, but is alive)
        return True
    return True


class DriftShare:
    def __init__(self, folder: Path, pid: int | None = None) -> None:
        self.folder = folder
        self.pid = os.getpid() if pid is None else pid

    @classmethod
    def from_env(cls) -> DriftShare | None:
        """The share of a worker of several (the supervisor sets the sync folder); None: one process."""
        folder = os.environ.get(SYNC_DIR_ENV)
        return cls(Path(folder) / "drift") if folder else None

    @staticmethod
    def _prefix(model: str, version: str) -> str:
        return f"{quote(model, safe='')}@{quote(version, safe='')}@"

    def write(self, model: str, version: str, state: SharedState) -> None:
        """Publish this worker's window of ``model`` at ``version`` (atomic replace)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{self._prefix(model, version)}{self.pid}{SUFFIX}"
        buf = io.BytesIO()
        np.save(buf, state.to_array(), allow_pickle=False)
        write_atomic(target, buf.getvalue(), tmp_prefix=f".tmp-{self.pid}-")  # forget() finds strays

    def others(self, model: str, version: str, state_type: Any = WindowState) -> list[Any]:
        """The latest windows of ``model`` at ``version`` written by the other live workers, read back
        with ``state_type.from_array``."""
        prefix = self._prefix(model, version)
        out: list[Any] = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return out
        for entry in entries:
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(SUFFIX)):
                continue
            pid_text = name[len(prefix) : -len(SUFFIX)]
            if not pid_text.isdigit() or int(pid_text) == self.pid or not _alive(int(pid_text)):
                continue
            try:
                out.append(state_type.from_array(np.load(entry.path, allow_pickle=False)))
            except Exception as exc:  # never half-written (os.replace), but a folder can be tampered with
                log.error("unreadable drift window", extra={"file": name, "error": repr(exc)})
        return out

    def discard_others(self, model: str, version: str) -> None:
        """Remove this worker's windows of ``model`` at versions other than ``version`` (after a reload:
        a sibling back on an old version must not merge this worker's window of it from long ago)."""
        keep = self._prefix(model, version)
        model_prefix = f"{quote(model, safe='')}@"
        suffix = f"@{self.pid}{SUFFIX}"
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder):
                name = entry.name
                if name.startswith(model_prefix) and name.endswith(suffix) and not name.startswith(keep):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def forget(self, pid: int) -> None:
        """Remove every window a (dead) worker wrote, and any temporary file it left mid-write; the
        supervisor calls this when a worker exits."""
        suffix, stray = f"@{pid}{SUFFIX}", f".tmp-{pid}-"
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder):
                if entry.name.endswith(suffix) or entry.name.startswith(stray):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
