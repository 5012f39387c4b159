"""This worker's side of the multi-worker drift windows: what it shares, when, and what it merges.

:class:`~service.monitoring.drift_share.DriftShare` is the shared folder (files keyed by model, version
and process); a :class:`DriftPublisher` decides what this worker writes there and merges the others'
windows into its statistics. ``InferenceService`` holds one only with several workers (``share`` given),
so the one-process request path carries none of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from service.aio import cancel_and_wait
from service.monitoring.drift import WindowState
from service.monitoring.drift_share import DriftShare
from service.monitoring.feature_drift import FeatureWindowState

log = logging.getLogger("lrbnn.service.inference")
S = TypeVar("S", WindowState, FeatureWindowState)


class Window(Protocol):
    """A drift window as the publisher reads it: how many scores it has taken, and its state."""

    @property
    def added(self) -> int: ...

    def state(self) -> WindowState | FeatureWindowState: ...


class DriftPublisher:
    """Shares this worker's drift windows (each keyed by model, or model + a window suffix) and merges
    the other live workers' latest ones of the same version. Never raises into a request: a folder that
    cannot be written or read is logged (once per distinct error) and the worker's own window is used."""

    def __init__(self, share: DriftShare) -> None:
        self.share = share
        self._versions: dict[str, str] = {}  # the version each window is of
        self._shared: dict[str, tuple[str, int]] = {}  # (version, scores added) last shared per key
        self._errors: dict[str, str] = {}  # the last sharing error logged per key
        self._task: asyncio.Task[None] | None = None

    def track(self, key: str, version: str) -> None:
        """Window ``key`` is now of ``version`` (first load or reload): the other workers' windows of
        older versions are dropped from the folder."""
        self._versions[key] = version
        with contextlib.suppress(OSError):
            self.share.discard_others(key, version)

    def forget(self, key: str, version: str) -> None:
        """``version`` has no window ``key`` (a reload to a version without it): no stale one is kept,
        here or, of older versions, in the folder."""
        self._versions.pop(key, None)
        with contextlib.suppress(OSError):
            self.share.discard_others(key, version)

    def publish(self, key: str, state: S, added: int) -> S:
        """Share this worker's window ``key`` (unless unchanged) and return it merged with the others';
        this worker's alone when the folder cannot be written."""
        if not self.write(key, state, added):
            return state
        return self._merged(key, state)

    def write(self, key: str, state: WindowState | FeatureWindowState, added: int) -> bool:
        """Write this worker's window unless that state is written already; False when the folder
        cannot be written (logged once per distinct error, not every 100 ms)."""
        version = self._versions[key]
        if self._shared.get(key) == (version, added):  # unchanged since it was last written
            return True
        try:
            self.share.write(key, version, state)
        except Exception as exc:  # monitoring never fails a request
            if self._errors.get(key) != repr(exc):
                self._errors[key] = repr(exc)
                log.error("drift window not shared", extra={"model": key, "error": repr(exc)})
            return False
        self._errors.pop(key, None)
        self._shared[key] = (version, added)
        return True

    def _merged(self, key: str, state: S) -> S:
        """This worker's window plus the other live workers' latest windows of the same version; a window
        that cannot be read or merged is skipped (logged), never the request that published."""
        try:
            others = self.share.others(key, self._versions[key], type(state))
        except Exception:
            log.exception("drift windows of the other workers not read", extra={"model": key})
            return state
        for other in others:
            try:
                state = state + other
            except ValueError as exc:
                log.error("drift window not merged", extra={"model": key, "error": str(exc)})
        return state

    def start(self, windows: Callable[[], Iterable[tuple[str, Window]]], interval_s: float) -> None:
        """Share every changed window every ``interval_s``, so what the other workers merge is at most
        that old even after this worker's traffic stops (requests publish at most that often, so the
        last ones before a pause would otherwise stay unshared)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._keep_sharing(windows, interval_s), name="share-drift-windows"
            )

    async def _keep_sharing(
        self, windows: Callable[[], Iterable[tuple[str, Window]]], interval_s: float
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for key, window in list(windows()):
                # added, then state: both only change on this (the event-loop) thread, so they agree
                if self._shared.get(key) != (self._versions[key], window.added):
                    self.write(key, window.state(), window.added)  # never raises

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
