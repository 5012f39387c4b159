"""asyncio helpers the service's background tasks share."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (a background loop: a batcher, the drift sharing, the reload follower) and wait
    until it has stopped; a task that already finished is only awaited. None: nothing to stop."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
