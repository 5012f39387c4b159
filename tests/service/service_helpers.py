"""Helpers for the service tests (a uniquely named module: ``conftest`` is ambiguous across folders)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import toy

ServeApp = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


def copy_version(repo: Path, source: str, target: str) -> Path:
    """Copy ``toy/<source>`` to ``toy/<target>`` with the manifest's version rewritten (re-saved)."""
    import json

    src, dst = repo / toy.MODEL / source, repo / toy.MODEL / target
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["model_version"] = target
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def served_model(client: httpx.AsyncClient, name: str = toy.MODEL) -> Any:
    return client.app.state.lrbnn.repository.get(name)  # type: ignore[attr-defined]


def slow_down(monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient, delay_s: float) -> list[list[int]]:
    """Make the served runtime sleep ``delay_s`` per batch; returns the block sizes of each batch run."""
    import time

    runtime = served_model(client).runtime
    original = runtime.predict
    batches: list[list[int]] = []

    def slow(x: Any, samples: int, seeds: list[int | None], block_sizes: list[int]) -> Any:
        batches.append(list(block_sizes))
        time.sleep(delay_s)
        return original(x, samples, seeds, block_sizes)

    monkeypatch.setattr(runtime, "predict", slow)
    return batches


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text scrape (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def without_ids(obj: Any) -> Any:
    """An answer (V1 or V2 JSON) without its prediction ids, which differ on every answer by design: for
    comparing the answers themselves (seeded reproducibility, batching identity)."""
    if isinstance(obj, dict):
        return {k: without_ids(v) for k, v in obj.items() if k != "prediction_id"}
    if isinstance(obj, list):
        return [without_ids(v) for v in obj if not (isinstance(v, dict) and v.get("name") == "prediction_id")]
    return obj


def redact_ids(content: bytes) -> bytes:
    """Raw answer bytes with every prediction id (32 hex digits) replaced by a placeholder of equal length."""
    import re

    return re.sub(rb"\b[0-9a-f]{32}\b", b"#" * 32, content)
