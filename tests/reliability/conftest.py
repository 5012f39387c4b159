"""Fixtures for the reliability tests: the service tests' toy checkpoint and in-process apps.

They come from ``tests/service/service_fixtures.py`` (one definition for both folders);
``reliability_helpers.py`` adds a real ``lrbnn serve`` subprocess and log capture.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]
for _p in (str(_ROOT), str(_ROOT / "tests" / "service"), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from service_fixtures import anyio_backend, repo, serve_app, toy_checkpoint  # noqa: E402

__all__ = ["anyio_backend", "repo", "serve_app", "toy_checkpoint"]
