"""Environment parsing, the sampling-mode override and the pluggable backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import toy
from service_helpers import ServeApp, without_ids

from model_core.checkpoint import SamplingMode
from service.settings import BackendName, Settings


def test_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "LRBNN_MODEL_REPOSITORY": str(tmp_path),
        "LRBNN_DEVICE": "cpu",
        "LRBNN_BACKEND": "onnx",
        "LRBNN_MAX_BATCH_SIZE": "8",
        "LRBNN_MAX_BATCH_DELAY_MS": "1.5",
        "LRBNN_MAX_BATCH_ROW_SAMPLES": "4096",
        "LRBNN_MAX_QUEUE": "3",
        "LRBNN_MAX_SAMPLES": "256",
        "LRBNN_DEFAULT_SAMPLES": "50",
        "LRBNN_REQUEST_TIMEOUT_S": "2",
        "LRBNN_API_TOKENS": "a, b ,",
        "LRBNN_DRIFT_WINDOW": "500",
        "LRBNN_ADMIN_TOKEN": "s3cret-admin",
        "LRBNN_MAX_BODY_BYTES": "4096",
        "LRBNN_CORS_ORIGINS": "https://a.example, https://b.example",
        "LRBNN_DRAIN_TIMEOUT_S": "5",
        "LRBNN_SAMPLING_MODE": "cached",
        "LRBNN_MAX_INSTANCES": "10",
        "LRBNN_BATCH_EXACT": "false",
        "LRBNN_RETRY_SHARE": "0.25",
        "LRBNN_RETRY_HORIZON_S": "30",
        "LRBNN_RETRY_TOKEN_KEY": "shared-by-the-replicas",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.model_repository == tmp_path and s.backend is BackendName.ONNX and s.max_batch_size == 8
    assert s.max_batch_row_samples == 4096
    assert s.tokens() == ["a", "b"] and s.admin() == "s3cret-admin"
    assert s.cors_origin_list == ["https://a.example", "https://b.example"]
    assert s.sampling_mode is SamplingMode.CACHED and s.default_samples == 50 and not s.batch_exact
    assert s.retry_share == 0.25 and s.retry_horizon_s == 30.0
    assert s.retry_token_key.get_secret_value() == "shared-by-the-replicas"
    assert "s3cret-admin" not in repr(s) and "'a, b" not in repr(s)  # secrets stay out of logs
    assert "shared-by-the-replicas" not in repr(s)


def test_the_retry_token_key_is_random_unless_set_and_bounds_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    a, b = Settings(), Settings()
    assert len(a.retry_token_key.get_secret_value()) >= 32
    assert a.retry_token_key.get_secret_value() != b.retry_token_key.get_secret_value()
    # the workers get the supervisor's settings pickled (spawn): one key, so each honours the others' tokens
    worker = pickle.loads(pickle.dumps(a))
    assert worker.retry_token_key.get_secret_value() == a.retry_token_key.get_secret_value()
    monkeypatch.setenv("LRBNN_RETRY_SHARE", "1.5")
    with pytest.raises(ValueError, match="retry_share"):
        Settings()


def test_bad_environment_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRBNN_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()


@pytest.mark.anyio
async def test_cached_sampling_override(serve_app: ServeApp) -> None:
    async with serve_app(sampling_mode="cached", max_samples=64) as client:
        listed = (await client.get("/v1/models")).json()["models"][0]
        assert listed["sampling_mode"] == "cached"
        body = {"instances": [toy.instance()], "parameters": {"samples": 64, "seed": 5}}
        a = (await client.post("/v1/models/toy:predict", json=body)).json()
        b = (await client.post("/v1/models/toy:predict", json=body)).json()
        assert without_ids(a) == without_ids(b)


@pytest.mark.anyio
async def test_onnx_backend_without_graph_fails_that_model_clearly(serve_app: ServeApp) -> None:
    async with serve_app(backend="onnx") as client:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert "model.onnx" in r.json()["errors"]["toy"] or "onnx backend" in r.json()["errors"]["toy"]
        assert (await client.post("/v1/models/toy:predict", json={"instances": [{}]})).status_code == 404
