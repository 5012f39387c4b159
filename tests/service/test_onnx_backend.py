"""``LRBNN_BACKEND=onnx``: the same service over an exported graph (parity itself is tested by the export)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import toy
from service_helpers import ServeApp, served_model, slow_down, without_ids

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/toy:predict"


@pytest.fixture(scope="session")
def toy_onnx(toy_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_core.export.onnx import export_onnx

    return export_onnx(toy_checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture
def onnx_repo(repo: Path, toy_onnx: Path) -> Path:
    shutil.copy(toy_onnx, repo / toy.MODEL / "1" / "model.onnx")
    return repo


async def test_onnx_backend_serves_v1_and_v2(onnx_repo: Path, serve_app: ServeApp) -> None:
    async with serve_app(backend="onnx") as client:
        assert (await client.get("/readyz")).status_code == 200
        assert served_model(client).runtime.device == "onnxruntime"
        body = {"instances": [toy.instance(), {"age": 40.0}], "parameters": {"samples": 32, "seed": 3}}
        a = await client.post(PREDICT, json=body)
        assert a.status_code == 200, a.text
        again = (await client.post(PREDICT, json=body)).json()
        assert without_ids(a.json()) == without_ids(again)  # seeded
        assert a.json()["predictions"][1]["imputed"] == ["heart_rate", "creatinine", "sex"]
        infer = {
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [70, 110, 1.5, 1]}],
            "parameters": {"samples": 32, "seed": 3},
        }
        r = await client.post("/v2/models/toy/infer", json=infer)
        assert r.status_code == 200
        mean = next(o for o in r.json()["outputs"] if o["name"] == "mean")["data"][0]
        single = {"instances": [toy.instance()], "parameters": {"samples": 32, "seed": 3}}
        v1 = (await client.post(PREDICT, json=single)).json()["predictions"][0]["mean"]
        assert mean == pytest.approx(v1, rel=1e-6)  # same row, same seed block: V1 == V2


async def test_onnx_batching_identity(
    onnx_repo: Path, serve_app: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [
        {
            "instances": [toy.instance(age=30.0 + 5 * i)] * (1 + i % 2),
            "parameters": {"samples": 16, "seed": i},
        }
        for i in range(6)
    ]
    async with serve_app(backend="onnx", max_batch_delay_ms=20, default_samples=16) as client:
        alone = [(await client.post(PREDICT, json=b)).json() for b in bodies]
        batches = slow_down(monkeypatch, client, 0.05)
        merged = await asyncio.gather(*(client.post(PREDICT, json=b) for b in bodies))
        assert any(len(sizes) > 1 for sizes in batches)
        assert [without_ids(r.json()) for r in merged] == without_ids(alone)
