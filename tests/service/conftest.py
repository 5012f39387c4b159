"""Fixtures for the service tests (defined in ``service_fixtures.py``, shared with the reliability tests)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for p in (str(_HERE.parents[1]), str(_HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from service_fixtures import anyio_backend, icu_client, repo, serve_app, toy_checkpoint  # noqa: E402

__all__ = ["anyio_backend", "icu_client", "repo", "serve_app", "toy_checkpoint"]
