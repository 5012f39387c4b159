"""The torch runtime's exact mode: one pass over a merged batch only where this machine proves it
bit-identical to the lone passes (checked at load), else one pass per request."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from service_helpers import ServeApp, served_model

pytestmark = pytest.mark.anyio


def _count_runs(monkeypatch: pytest.MonkeyPatch, runtime: Any, skew: float = 0.0) -> list[int]:
    """Record the rows of every network pass; ``skew`` > 0 fakes a BLAS that rounds merged rows apart."""
    calls: list[int] = []
    real = runtime._run

    def run(xt: Any, samples: int, seeds: list[int | None], sizes: list[int]) -> Any:
        calls.append(int(xt.shape[0]))
        pred = real(xt, samples, seeds, sizes)
        if skew and xt.shape[0] > 1:
            return dataclasses.replace(pred, mean=pred.mean + skew)
        return pred

    monkeypatch.setattr(runtime, "_run", run)
    return calls


async def test_merged_batch_is_one_pass_with_lone_bits(serve_app: ServeApp, monkeypatch) -> None:
    async with serve_app() as client:
        runtime = served_model(client).runtime
        assert runtime.batch_invariant  # the toy low-rank MLP on the CPU, proven at load
        assert runtime.plan is not None  # served by the pass frozen at load, not a walk over the model
        rng = np.random.default_rng(1)
        x = rng.normal(size=(6, runtime.model.layers[0].in_features)).astype(np.float32)
        lone = [runtime.predict(x[i : i + 2], 64, [i], [2]) for i in (0, 2, 4)]
        calls = _count_runs(monkeypatch, runtime)
        merged = runtime.predict(x, 64, [0, 2, 4], [2, 2, 2])
        assert calls == [6]  # one network pass for the three requests
        for i, alone in enumerate(lone):
            for key, value in alone.items():
                assert np.array_equal(value, merged[key][2 * i : 2 * i + 2]), key


async def test_a_machine_that_rounds_merged_rows_apart_gets_per_request_passes(
    serve_app: ServeApp, monkeypatch
) -> None:
    async with serve_app() as client:
        runtime = served_model(client).runtime
        calls = _count_runs(monkeypatch, runtime, skew=1e-6)
        row = np.zeros((1, runtime.model.layers[0].in_features), dtype=np.float32)
        assert runtime.check_batch_invariance(row, 32) is False
        assert runtime.batch_invariant is False
        calls.clear()
        x = np.ones((3, row.shape[1]), dtype=np.float32)
        runtime.predict(x, 32, [1, 2], [1, 2])
        assert calls == [1, 2]  # the very passes each request makes alone
