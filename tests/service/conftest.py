"""Fixtures for the service tests (``service_fixtures.py``, shared with the reliability tests, and the
admission harness of ``admission_harness.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for p in (str(_HERE.parents[1]), str(_HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from admission_harness import harness  # noqa: E402
from service_fixtures import anyio_backend, icu_client, repo, serve_app, toy_checkpoint  # noqa: E402

__all__ = ["anyio_backend", "harness", "icu_client", "repo", "serve_app", "toy_checkpoint"]
