"""``serve(repo, host, port, workers) -> int``: one server, or several workers, exiting 0 on SIGTERM.

One process runs :func:`service.server.run_server` (uvicorn with a graceful drain); ``workers`` > 1 runs
that many under the supervisor of ``service/workers.py``. A host other than loopback needs API tokens.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from service.server import run_server
from service.settings import Settings, UnauthenticatedExposure


def serve(
    repo: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
) -> int:
    """Run the server until a signal drains it; returns the process exit status.

    ``workers`` (default ``LRBNN_WORKERS``, 1) > 1 runs that many server processes on one socket under a
    supervisor (``service/workers.py``). A ``host`` other than loopback needs API tokens or
    ``LRBNN_ALLOW_UNAUTHENTICATED=true``; without either it returns 2 with a one-line error.
    """
    settings = Settings() if repo is None else Settings(model_repository=Path(repo))
    try:
        settings.check_exposure(host)
    except UnauthenticatedExposure as exc:  # one line, no traceback: the operator's fix is in it
        print(f"lrbnn: error: {exc}", file=sys.stderr)
        return 2
    count = settings.workers if workers is None else workers
    if count > 1:
        from service.logs import configure_logging
        from service.workers import run_workers

        configure_logging(settings.log_level)
        return run_workers(settings, host, port, count)
    return run_server(settings, host, port)
