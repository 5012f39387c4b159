"""The onnxruntime backend serves without torch: the point of ``LRBNN_BACKEND=onnx`` is a torch-free image.

torch is installed in the test environment, so each check runs in a subprocess whose first act is to
put a finder on ``sys.meta_path`` that answers every ``torch`` / ``torch.*`` import as if torch were not
installed (``ModuleNotFoundError``) and records the attempt with the importing stack. A check passes
only if nothing even tried to import torch (an attempt swallowed by ``except ImportError`` would still
mean the module depends on torch when it is present). The ONNX graph is exported in this process,
which has torch, exactly as ``lrbnn export-onnx`` runs on a training machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import toy

from service.testing import free_port, wait_until_ready

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]

#: Prepended to every subprocess script: torch behaves as not installed; attempts are recorded.
BLOCK_TORCH = """
import sys, traceback
TORCH_ATTEMPTS = []
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            TORCH_ATTEMPTS.append(name + "\\n" + "".join(traceback.format_stack(limit=12)))
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""

#: Ends the script: fail loudly (exit 3) if torch was tried or got imported anyway.
CHECK_NO_TORCH = """
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
if TORCH_ATTEMPTS or loaded:
    print("TORCH IMPORTED:", loaded, *TORCH_ATTEMPTS[:3], sep="\\n")
    sys.exit(3)
print("NO TORCH")
"""

SERVE_IN_PROCESS = """
import asyncio, json, os
from pathlib import Path
import httpx
from service.app import create_app
from service.settings import Settings

async def main():
    settings = Settings(model_repository=Path(os.environ["REPO"]), max_batch_delay_ms=2.0)
    assert settings.backend.value == "onnx", settings.backend
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if app.state.lrbnn.loading is not None:
            await app.state.lrbnn.loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
            ready = await client.get("/readyz")
            v1 = await client.post("/v1/models/toy:predict", json=json.loads(os.environ["V1"]))
            v2 = await client.post("/v2/models/toy/infer", json=json.loads(os.environ["V2"]))
            device = app.state.lrbnn.repository.get("toy").runtime.device
    print(json.dumps({"ready": ready.status_code, "device": device,
                      "v1": [v1.status_code, v1.json()], "v2": [v2.status_code, v2.json()]}))

asyncio.run(main())
"""

V1_BODY = {"instances": [toy.instance(), {"age": 40.0}], "parameters": {"samples": 16, "seed": 3}}
V2_BODY = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [70, 110, 1.5, 1]}],
    "parameters": {"samples": 16, "seed": 3},
}


def run_without_torch(script: str, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + script + CHECK_NO_TORCH],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory: pytest.TempPathFactory, toy_checkpoint: Path) -> Path:
    from model_core.export.onnx import export_onnx

    repo = toy.make_repository(tmp_path_factory.mktemp("torch-free") / "models", toy_checkpoint)
    export_onnx(toy_checkpoint, repo / toy.MODEL / "1" / "model.onnx")
    return repo


def test_service_imports_without_torch() -> None:
    """``import service.app`` / ``service.main`` / the ONNX runtime and the checkpoint manifest API."""
    out = run_without_torch(
        "import service.app, service.main, service.runtime.onnx, model_core.export.onnx_runtime\n"
        "from model_core.checkpoint import Manifest, read_manifest, CheckpointError\n"
    )
    assert "NO TORCH" in out
    # and with torch installed, importing the service does not pull it in either
    code = "import sys, service.app, service.main; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_lazy_torch_names_still_import() -> None:
    from model_core.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
    from model_core.checkpoint.io import load_checkpoint as io_load
    from model_core.models import BayesMLP, build_model

    assert load_checkpoint is io_load and callable(save_checkpoint) and LoadedCheckpoint.__name__
    assert callable(build_model) and BayesMLP.__name__ == "BayesMLP"
    import model_core.checkpoint as ckpt

    with pytest.raises(AttributeError):
        _ = ckpt.no_such_name  # type: ignore[attr-defined]


def test_onnx_backend_serves_v1_and_v2_without_torch(onnx_repo: Path) -> None:
    out = run_without_torch(
        SERVE_IN_PROCESS,
        env={
            "LRBNN_BACKEND": "onnx",
            "REPO": str(onnx_repo),
            "V1": json.dumps(V1_BODY),
            "V2": json.dumps(V2_BODY),
        },
    )
    result = json.loads(out.splitlines()[0])
    assert result["ready"] == 200 and result["device"] == "onnxruntime"
    status, v1 = result["v1"]
    assert status == 200, v1
    assert len(v1["predictions"]) == 2 and 0.0 <= v1["predictions"][0]["mean"] <= 1.0
    status, v2 = result["v2"]
    assert status == 200, v2
    assert {o["name"] for o in v2["outputs"]} >= {"mean"}


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.slow
def test_lrbnn_serve_onnx_without_torch(onnx_repo: Path, tmp_path: Path) -> None:
    """The image's entry point, ``lrbnn serve``, on a real socket with torch absent."""
    port = free_port()
    repo = tmp_path / "models"
    shutil.copytree(onnx_repo, repo)
    script = (
        BLOCK_TORCH
        + (
            "from model_core.cli.main import main\n"
            f"code = main(['serve', '--model-repository', {str(repo)!r}, '--port', '{port}'])\n"
        )
        + CHECK_NO_TORCH.replace('print("NO TORCH")', 'print("NO TORCH"); sys.exit(code)')
    )
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "LRBNN_BACKEND": "onnx"},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base + "/readyz", proc, log, timeout_s=120)
        status, v1 = _post(base + "/v1/models/toy:predict", V1_BODY)
        assert status == 200 and len(v1["predictions"]) == 2
        status, v2 = _post(base + "/v2/models/toy/infer", V2_BODY)
        assert status == 200 and any(o["name"] == "mean" for o in v2["outputs"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "NO TORCH" in text and "TORCH IMPORTED" not in text, text[-4000:]
