"""Fixtures for the sampling-op tests (no ``__init__.py``: the repository root is put on ``sys.path``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_REPO_ROOT = str(_HERE.parents[2])
for _p in (_REPO_ROOT, str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


@pytest.fixture
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the Triton backend on the CPU interpreter; unregister it afterwards.

    The kernel is jitted on first use (not at import), so setting ``TRITON_INTERPRET`` here is enough. The
    registry is restored so that no other test sees a ``triton`` backend on this CUDA-less machine.
    """
    pytest.importorskip("triton")
    from model_core.sampling.backends import BACKENDS

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    saved = dict(BACKENDS)
    try:
        yield
    finally:
        BACKENDS.clear()
        BACKENDS.update(saved)
