"""Hot reload across the worker processes of one server (``LRBNN_WORKERS`` > 1).

Each worker is a whole server with its own copy of every model, so an admin ``POST .../reload`` that
lands on one worker must reach the others. The worker that receives it validates and swaps the new
version itself (so the admin gets that worker's precise answer, success or refusal) and only on success
publishes ``(model, version)`` as a small JSON file in a folder the supervisor shares with every worker.
Every worker follows that folder (:meth:`ReloadBroadcast.follow`, a check every ``interval_s``) and
reloads a model whose published version differs from the one it serves: the others serve the new
version within about half a second, and a worker restarted later loads the published version rather
than the newest one (an explicit rollback sticks).

A file, not a socket or a pipe: the workers share nothing else, a restarted worker finds the state
without a handshake, and a write is one atomic ``os.replace``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from service.atomic import write_atomic

if TYPE_CHECKING:
    from service.repository import ModelRepository, ServedModel

log = logging.getLogger("lrbnn.service.sync")

#: Set by the supervisor (``service/workers.py``) in every worker's environment; unset: one process.
SYNC_DIR_ENV = "LRBNN_WORKER_SYNC_DIR"


class ReloadBroadcast:
    def __init__(self, folder: Path, interval_s: float = 0.5) -> None:
        self.folder = folder
        self.interval_s = interval_s
        self._seen: dict[str, int] = {}  # file name -> st_mtime_ns last acted on

    @classmethod
    def from_env(cls) -> ReloadBroadcast | None:
        folder = os.environ.get(SYNC_DIR_ENV)
        return cls(Path(folder)) if folder else None

    def publish(self, name: str, version: str) -> None:
        """Record that every worker should serve ``name`` at ``version`` (atomic replace)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{quote(name, safe='')}.json"
        write_atomic(target, json.dumps({"model": name, "version": version}).encode())

    def desired(self, changed_only: bool = False) -> dict[str, str]:
        """The published version of each model (only files changed since the last call if asked)."""
        out: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return out
        for entry in entries:
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            mtime = entry.stat().st_mtime_ns
            if changed_only and self._seen.get(entry.name) == mtime:
                continue
            try:
                record = json.loads(Path(entry.path).read_text())
                name, version = str(record["model"]), str(record["version"])
            except (OSError, ValueError, KeyError, TypeError):
                log.error("unreadable reload record", extra={"file": entry.name})
                continue
            if name != unquote(entry.name[: -len(".json")]):
                continue
            self._seen[entry.name] = mtime
            out[name] = version
        return out

    def reconcile(self, repository: ModelRepository) -> None:
        """Before serving (a worker's preload): switch every model to its published version, if any."""
        for name, version in self.desired().items():
            current = repository.version_of(name)
            if current is not None and current != version:
                try:
                    repository.reload(name, version)
                except Exception as exc:  # the version that loaded keeps serving; logged
                    log.error(
                        "published version failed to load here",
                        extra={"model": name, "version": version, "error": str(exc), "serving": current},
                    )

    async def apply(
        self,
        repository: ModelRepository,
        attach: Callable[[ServedModel], None],
        changed_only: bool = True,
    ) -> None:
        """Reload every model whose published version is not the one this worker serves.

        ``attach`` starts serving the reloaded model (the inference service's); the broadcast needs
        nothing else of the server.
        """
        for name, version in self.desired(changed_only).items():
            current = repository.version_of(name)
            if current == version:
                continue
            try:
                served = await asyncio.to_thread(repository.reload, name, version)
            except Exception as exc:  # the publisher validated it; a failure here is logged, old one serves
                log.error(
                    "reload published by another worker failed here",
                    extra={"model": name, "version": version, "error": str(exc), "serving": current},
                )
                continue
            attach(served)
            log.info(
                "reloaded, following another worker",
                extra={"model": name, "version": version, "previous_version": current},
            )

    async def follow(self, repository: ModelRepository, attach: Callable[[ServedModel], None]) -> None:
        """Apply published reloads until cancelled (the first pass sees every record)."""
        await self.apply(repository, attach, changed_only=False)
        while True:
            await asyncio.sleep(self.interval_s)
            await self.apply(repository, attach)
