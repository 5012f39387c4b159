"""Hot reload: a new version swaps in after full validation; a corrupt one is refused, the old serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import toy
from service_helpers import ServeApp, copy_version, metric_value, without_ids

pytestmark = pytest.mark.anyio
PREDICT = "/v1/models/toy:predict"
ADMIN = {"authorization": "Bearer root"}


def _resave(path: Path) -> None:
    """Rewrite a copied version's manifest through the checkpoint API (so sha256 etc. stay valid)."""
    from model_core.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    save_checkpoint(path, ckpt.model, ckpt.manifest)


async def test_reload_to_new_version_and_refuse_a_corrupt_one(serve_app: ServeApp, repo: Path) -> None:
    async with serve_app(admin_token="root") as client:
        body = {"instances": [toy.instance()], "parameters": {"seed": 4}}
        before = (await client.post(PREDICT, json=body)).json()
        assert before["model_version"] == "1"

        v2 = copy_version(repo, "1", "2")
        _resave(v2)
        r = await client.post("/v1/models/toy/reload", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "2" and r.json()["previous_version"] == "1"
        after = (await client.post(PREDICT, json=body)).json()
        assert after["model_version"] == "2"
        # same weights, same seed
        assert without_ids(after["predictions"]) == without_ids(before["predictions"])
        scrape = (await client.get("/metrics")).text
        assert metric_value(scrape, "lrbnn_model_info", model="toy", version="2") == 1.0
        assert metric_value(scrape, "lrbnn_model_info", model="toy", version="1") is None

        v3 = copy_version(repo, "2", "3")
        weights = v3 / "weights.safetensors"
        blob = bytearray(weights.read_bytes())
        blob[-5] ^= 0x01  # one flipped bit in the tensor data
        weights.write_bytes(bytes(blob))
        r = await client.post("/v1/models/toy/reload", headers=ADMIN)
        assert r.status_code == 409
        assert "sha256" in r.json()["error"] and "still serving version 2" in r.json()["error"]
        still = await client.post(PREDICT, json=body)
        assert still.status_code == 200 and still.json()["model_version"] == "2"
        assert (await client.get("/readyz")).status_code == 200

        # an explicit version can be reloaded too (rollback)
        r = await client.post("/v1/models/toy/reload", headers=ADMIN, json={"version": "1"})
        assert r.status_code == 200 and r.json()["model_version"] == "1"


async def test_reload_unknown_model_is_404(serve_app: ServeApp) -> None:
    async with serve_app(admin_token="root") as client:
        assert (await client.post("/v1/models/ghost/reload", headers=ADMIN)).status_code == 404
        r = await client.post("/v1/models/toy/reload", headers=ADMIN, json={"version": "../../etc"})
        assert r.status_code == 422 and r.json()["field"] == "version"
        r = await client.post("/v1/models/toy/reload", headers=ADMIN, json={"version": "99"})
        assert r.status_code == 409 and "no such version" in r.json()["error"]


async def test_newest_version_is_served_numerically(repo: Path, serve_app: ServeApp) -> None:
    for version in ("2", "10"):
        _resave(copy_version(repo, "1", version))
    async with serve_app() as client:
        r = await client.post(PREDICT, json={"instances": [toy.instance()]})
        assert r.json()["model_version"] == "10"
        listed = (await client.get("/v1/models")).json()["models"][0]
        assert listed["versions"] == ["1", "2", "10"]


async def test_a_broken_model_keeps_readyz_red(repo: Path, serve_app: ServeApp) -> None:
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{}")
    async with serve_app() as client:
        r = await client.get("/readyz")
        assert r.status_code == 503 and "broken" in r.json()["errors"]
        assert (await client.post(PREDICT, json={"instances": [toy.instance()]})).status_code == 200
        assert "broken" in (await client.get("/v1/models")).json()["failed"]


async def test_several_models_are_served_side_by_side(repo: Path, serve_app: ServeApp) -> None:
    import json
    import shutil

    other = repo / "toy-b" / "3"
    shutil.copytree(repo / toy.MODEL / "1", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest.update(model_name="toy-b", model_version="3")
    (other / "manifest.json").write_text(json.dumps(manifest))
    async with serve_app() as client:
        assert (await client.get("/readyz")).json()["models"] == {"toy": "1", "toy-b": "3"}
        body = {"instances": [toy.instance()], "parameters": {"seed": 2}}
        a = (await client.post(PREDICT, json=body)).json()
        b = (await client.post("/v1/models/toy-b:predict", json=body)).json()
        assert (b["model_name"], b["model_version"]) == ("toy-b", "3")
        assert without_ids(a["predictions"]) == without_ids(b["predictions"])  # same weights and seed
        scrape = (await client.get("/metrics")).text
        assert metric_value(scrape, "lrbnn_predictions_total", model="toy-b") == 1.0
