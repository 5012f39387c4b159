"""Dynamic batching: identity under merging, back-pressure (429), timeouts (504), abandoned requests."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import toy
from service_helpers import ServeApp, metric_value, served_model, slow_down, without_ids

from service.batching import ModelBatcher
from service.errors import ClientDisconnected
from service.monitoring.metrics import Metrics

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/toy:predict"


def _requests() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(8):
        rows = [
            toy.instance(age=float(rng.normal(60, 15)), heart_rate=float(rng.normal(90, 20)))
            for _ in range(1 + i % 3)
        ]
        out.append({"instances": rows, "parameters": {"samples": 64, "seed": 1000 + i}})
    return out


async def test_merged_answers_equal_answers_alone(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = _requests()
    async with serve_app(max_batch_size=64, max_batch_delay_ms=20) as client:
        alone = [(await client.post(PREDICT, json=b)).json() for b in bodies]
        batches = slow_down(monkeypatch, client, 0.05)
        merged = await asyncio.gather(*(client.post(PREDICT, json=b) for b in bodies))
        assert [r.status_code for r in merged] == [200] * len(bodies)
        # bit-identical (the ids aside), whatever the batch neighbours
        assert [without_ids(r.json()) for r in merged] == without_ids(alone)
        assert any(len(sizes) > 1 for sizes in batches), f"nothing was merged: {batches}"
        assert sum(len(sizes) for sizes in batches) == len(bodies)


async def test_merged_pass_mode_matches_up_to_rounding(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LRBNN_BATCH_EXACT=false: one network pass per batch; same noise, so equal up to float32 rounding."""
    bodies = _requests()
    async with serve_app(max_batch_delay_ms=20, batch_exact=False) as client:
        alone = [(await client.post(PREDICT, json=b)).json()["predictions"] for b in bodies]
        batches = slow_down(monkeypatch, client, 0.05)
        merged = await asyncio.gather(*(client.post(PREDICT, json=b) for b in bodies))
        assert any(len(sizes) > 1 for sizes in batches)
        for got, want in zip((r.json()["predictions"] for r in merged), alone, strict=True):
            for g, w in zip(got, want, strict=True):
                for key in ("mean", "variance", "epistemic", "aleatoric", "ood_score"):
                    assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-7), key


async def test_different_samples_are_never_merged(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve_app(max_batch_delay_ms=20) as client:
        batches = slow_down(monkeypatch, client, 0.05)
        runtime = served_model(client).runtime
        seen: list[int] = []
        inner = runtime.predict

        def record(x: object, samples: int, seeds: list[int | None], block_sizes: list[int]) -> object:
            seen.append(samples)
            return inner(x, samples, seeds, block_sizes)

        monkeypatch.setattr(runtime, "predict", record)
        sizes = (8, 16) * 3
        bodies = [{"instances": [toy.instance()], "parameters": {"samples": s, "seed": 1}} for s in sizes]
        rs = await asyncio.gather(*(client.post(PREDICT, json=b) for b in bodies))
        assert all(r.status_code == 200 for r in rs)
        assert [r.json()["samples"] for r in rs] == list(sizes)
        assert len(seen) == len(batches) and len(batches) < len(bodies)  # merged, but only by S


async def test_full_queue_is_429_with_retry_after(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve_app(max_queue=1, max_batch_size=1) as client:
        slow_down(monkeypatch, client, 0.3)
        body = {"instances": [toy.instance()], "parameters": {"seed": 1}}
        rs = await asyncio.gather(*(client.post(PREDICT, json=body) for _ in range(5)))
        codes = sorted(r.status_code for r in rs)
        assert 429 in codes and 200 in codes, codes
        rejected = [r for r in rs if r.status_code == 429]
        assert all(int(r.headers["retry-after"]) >= 1 for r in rejected)
        scrape = (await client.get("/metrics")).text
        value = metric_value(scrape, "lrbnn_requests_rejected_total", model="toy", reason="queue_full")
        assert value == len(rejected)


async def _busy_queue(client: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelBatcher, list[Any]]:
    """The toy batcher with one slow batch running and two queued (tasks to await at the end)."""
    served = served_model(client)
    slow_down(monkeypatch, client, 0.3)
    batcher = client.app.state.lrbnn.inference.batchers["toy"]
    x = served.inputs.encode([toy.instance()]).x
    busy = [asyncio.create_task(batcher.submit(served, x, 8, i, 5.0)) for i in range(3)]
    await asyncio.sleep(0.05)  # one running, two queued
    return batcher, busy


async def test_an_over_budget_queue_refuses_before_reading_the_body(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under overload a refusal must be cheap: when the queued work alone exceeds the budget, V1 and V2
    answer 429 before the body is parsed (a malformed body gets the 429, not its 400); feedback is not
    model work and is never refused for it; once the queue drains, the same body gets its 400."""
    async with serve_app(max_queue_wait_ms=500, max_batch_size=1) as client:
        batcher, busy = await _busy_queue(client, monkeypatch)
        batcher.cost.seconds_per_unit = 1.0  # the queued work is estimated at far over 0.5 s
        for path in (PREDICT, "/v2/models/toy/infer"):
            r = await client.post(path, content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 429, (path, r.text)
            assert int(r.headers["retry-after"]) >= 1
            assert "already queued" in r.json()["error"]
        feedback = await client.post(
            "/v1/models/toy/feedback", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert feedback.status_code == 400
        batcher.cost.seconds_per_unit = None
        await asyncio.gather(*busy)
        r = await client.post(PREDICT, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400


async def test_a_request_over_budget_is_refused_before_its_preprocessing(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queued work alone is within the budget (the body is read), but this request's estimated time
    to answer is not: 429 with the estimate in the message, and its instances are never preprocessed
    (under sustained overload that preprocessing took half of the event loop: docs/reliability.md). The
    same body, once the estimate fits, is preprocessed and answered."""
    from service import inference

    async with serve_app(max_queue_wait_ms=500, max_batch_size=1) as client:
        batcher, busy = await _busy_queue(client, monkeypatch)
        encoded: list[int] = []
        real_encode = inference.Instances.encode

        def counting(self: inference.Instances, adapter: Any) -> Any:
            encoded.append(len(self))
            return real_encode(self, adapter)

        monkeypatch.setattr(inference.Instances, "encode", counting)
        monkeypatch.setattr(batcher, "estimated_wait_s", lambda: 0.1)  # the queue alone fits
        monkeypatch.setattr(batcher, "estimated_answer_s", lambda rows, samples: 2.0)  # this one does not
        body = {"instances": [toy.instance(), toy.instance(age=50.0)], "parameters": {"seed": 1}}
        r = await client.post(PREDICT, json=body)
        assert r.status_code == 429, r.text
        assert "estimated time to answer 2000 ms" in r.json()["error"]
        assert int(r.headers["retry-after"]) >= 2
        assert encoded == []
        monkeypatch.setattr(batcher, "estimated_answer_s", lambda rows, samples: 0.2)
        r = await client.post(PREDICT, json=body)
        assert r.status_code == 200, r.text
        assert encoded == [2]
        await asyncio.gather(*busy)


async def test_timeout_is_504_and_frees_the_slot(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve_app(request_timeout_s=0.1, max_queue=3) as client:
        slow_down(monkeypatch, client, 0.4)
        body = {"instances": [toy.instance()]}
        rs = await asyncio.gather(*(client.post(PREDICT, json=body) for _ in range(3)))
        assert [r.status_code for r in rs] == [504, 504, 504]
        batcher = client.app.state.lrbnn.inference.batchers["toy"]  # type: ignore[attr-defined]
        assert batcher.depth == 0
        await asyncio.sleep(0.5)
        monkeypatch.undo()
        assert (await client.post(PREDICT, json=body)).status_code == 200


async def test_disconnected_client_leaves_the_queue(
    serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve_app(max_queue=4) as client:
        served = served_model(client)
        batches = slow_down(monkeypatch, client, 0.2)
        batcher = client.app.state.lrbnn.inference.batchers["toy"]  # type: ignore[attr-defined]
        x = served.inputs.encode([toy.instance()]).x
        busy = asyncio.create_task(batcher.submit(served, x, 8, 1, 5.0))
        await asyncio.sleep(0.05)  # the first request is now running; the next ones queue

        async def gone() -> None:
            await asyncio.sleep(0.02)

        with pytest.raises(ClientDisconnected):
            await batcher.submit(served, x, 8, 2, 5.0, disconnected=gone)
        assert batcher.depth == 0
        await busy
        await asyncio.sleep(0.05)
        assert len(batches) == 1  # the abandoned request was never computed


async def test_lone_request_is_not_delayed(serve_app: ServeApp) -> None:
    """With a 3 s batch delay, a lone request still answers at once (no fixed wait)."""
    async with serve_app(max_batch_delay_ms=3000) as client:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await client.post(PREDICT, json={"instances": [toy.instance()]})
        assert r.status_code == 200
        assert loop.time() - t0 < 2.0


class _GatedRuntime:
    """Records each batch's block sizes and when it started; a gate holds a batch running."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[tuple[float, list[int]]] = []

    def predict(self, x: Any, samples: int, seeds: list[int | None], block_sizes: list[int]) -> Any:
        self.batches.append((time.perf_counter(), list(block_sizes)))
        assert self.gate.wait(10)
        return {"mean": x[:, :1].copy()}


async def test_requests_queued_behind_a_running_batch_do_not_wait_the_delay_again() -> None:
    """The batch delay counts from the oldest request's arrival: requests that queued while the previous
    batch ran have waited already and go as soon as the compute thread is free."""
    runtime = _GatedRuntime()
    served: Any = SimpleNamespace(runtime=runtime)
    delay = 0.5
    batcher = ModelBatcher(
        "gated", Metrics(), max_batch_size=32, max_delay_s=delay, max_queue=100, max_wait_s=0
    )
    batcher.start()
    try:
        x = np.zeros((1, 3), dtype=np.float32)
        first = asyncio.ensure_future(batcher.submit(served, x, 8, 1, 30.0))
        while not runtime.batches:  # the lone first request is dispatched at once
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(served, x, 8, s, 30.0)) for s in (2, 3, 4)]
        await asyncio.sleep(delay + 0.1)  # queued longer than the delay behind the running batch
        opened = time.perf_counter()
        runtime.gate.set()
        await asyncio.gather(first, *rest)
        (_, sizes0), (started, sizes1) = runtime.batches
        assert sizes0 == [1] and sizes1 == [1, 1, 1]
        assert started - opened < delay / 2, started - opened
    finally:
        runtime.gate.set()
        await batcher.stop()
