"""Log capture for in-process apps, for the reliability tests (a server subprocess is
``service.testing.ServerProcess``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        from service.logs import JsonFormatter

        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every line the ``lrbnn`` loggers write while the block runs, JSON-formatted as in production.
    Enter it after ``create_app`` (which installs the production handler)."""
    handler = _Collect()
    root = logging.getLogger("lrbnn")
    root.addHandler(handler)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
