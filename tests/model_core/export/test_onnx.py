"""ONNX export: the graph reproduces torch given the same explicit noise, with dynamic S and N.

Why these tests: the torch-free server trusts that onnxruntime on the exported graph computes what the
library computes. Parity is checked against the library's own predictive path (``model.predictive`` +
``summarize`` fed the same noise), for several S and N, so a stale or shape-specialised export fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model_core.checkpoint import load_checkpoint
from model_core.cli.main import main
from model_core.data.table import load_csv
from model_core.export.explicit_noise import ExplicitNoise
from model_core.export.onnx import (
    ExportError,
    build_graph,
    export_model,
    export_onnx,
    noise_layout,
)
from model_core.export.onnx_runtime import OnnxPredictor, draw_noise
from model_core.layers.base import PredictiveContext
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.models.spec import Method
from model_core.predict import predict, summarize
from model_core.sampling.noise import NoiseError
from model_core.sampling.types import Backend
from model_core.training.pipeline import TrainOptions, train_checkpoint

RTOL, ATOL = 1e-4, 1e-5
SHAPES = [(3, 1), (16, 7)]  # (S, N): two sample counts, one and several rows


def _write_csv(path: Path, regression: bool, n: int = 240, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(2.0, 3.0, size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    if regression:
        y = [f"{v:.4f}" for v in 1.5 * a - 0.3 * b + rng.normal(0.0, 0.2, size=n)]
    else:
        y = ["yes" if v else "no" for v in (a - 0.2 * b + rng.normal(0.0, 0.5, size=n)) > 0]
    lines = ["a,b,color,y"] + [f"{p:.4f},{q:.4f},{c},{t}" for p, q, c, t in zip(a, b, color, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Train (once per key) a tiny checkpoint; key = method, with ``-reg`` for a regression task."""
    root = tmp_path_factory.mktemp("onnx_export")
    made: dict[str, Path] = {}

    def make(key: str) -> Path:
        if key not in made:
            regression = key.endswith("-reg")
            method = Method(key.removesuffix("-reg"))
            csv = _write_csv(root / f"{key}.csv", regression)
            splits = load_csv(csv, "y", task="regression" if regression else "binary")
            opts = TrainOptions(
                method=method, rank=3, hidden=(8, 8), epochs=2, progress=False, samples=16, members=2
            )
            train_checkpoint(splits, opts, root / f"ckpt-{key}")
            made[key] = root / f"ckpt-{key}"
        return made[key]

    return make


@pytest.fixture(scope="module")
def exported(
    checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """Export (once per key) a checkpoint made by ``checkpoint``: exports dominate the test time."""
    root = tmp_path_factory.mktemp("onnx_graphs")
    made: dict[str, Path] = {}

    def make(key: str) -> Path:
        if key not in made:
            made[key] = export_onnx(checkpoint(key), root / f"{key}.onnx")
        return made[key]

    return make


def _features(ckpt: Path, n: int, seed: int = 3) -> np.ndarray:
    n_in = load_checkpoint(ckpt).manifest.architecture.in_features
    return np.random.default_rng(seed).normal(size=(n, n_in)).astype(np.float32)


def _library_reference(model: torch.nn.Module, x: np.ndarray, noise: list[np.ndarray], samples: int) -> dict:
    """What the library computes with this noise: model.predictive (lrt backend) + summarize."""
    ctx = PredictiveContext(samples, ExplicitNoise([torch.from_numpy(a) for a in noise]), Backend.LRT)
    with torch.no_grad():
        pred = summarize(model.predictive(torch.from_numpy(x), ctx), model.spec)  # type: ignore[operator, arg-type]
    return {k: v for k, v in vars(pred).items() if v is not None}


# lrsvd builds the same layers as lowrank (only its initialisation differs), so it is not repeated here.
@pytest.mark.parametrize(
    "key", ["lowrank", "bbb", "deterministic", "mcdropout", "rank1", "lowrank-reg", "ensemble", "lowrank-ens"]
)
def test_parity_torch_vs_onnxruntime(
    key: str, checkpoint: Callable[[str], Path], exported: Callable[[str], Path]
) -> None:
    ckpt = checkpoint(key)
    out = exported(key)
    session = OnnxPredictor(out, intra_op_threads=1)
    model = load_checkpoint(ckpt).model
    graph, layout = build_graph(model)
    assert [(n.name, n.width, n.kind) for n in layout] == [(n.name, n.width, n.kind) for n in session.layout]
    assert "interval_low" not in session.output_names  # the service applies the calibrated interval
    for samples, n_rows in SHAPES:
        x = _features(ckpt, n_rows)
        noise = draw_noise(session.layout, samples, [11], [n_rows])
        got = session.run(x, noise)
        with torch.no_grad():
            torch_out = graph(torch.from_numpy(x), *(torch.from_numpy(a) for a in noise))
        ref = _library_reference(model, x, noise, samples)
        for name, t in zip(graph.names, torch_out, strict=True):
            assert got[name].shape == (n_rows,), name
            np.testing.assert_allclose(got[name], t.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)
            np.testing.assert_allclose(got[name], ref[name].numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


def test_deterministic_matches_predict(
    checkpoint: Callable[[str], Path], exported: Callable[[str], Path]
) -> None:
    """A noise-free graph still equals the library's ``predict`` for any S."""
    ckpt = checkpoint("deterministic")
    session = OnnxPredictor(exported("deterministic"))
    assert session.layout == []
    x = _features(ckpt, 5)
    ref = predict(load_checkpoint(ckpt).model, torch.from_numpy(x), samples=8, seed=0)
    got = session.predict(x, samples=8, seeds=[0], block_sizes=[5])
    np.testing.assert_allclose(got["mean"], ref.mean.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["epistemic"], ref.epistemic.numpy(), rtol=RTOL, atol=ATOL)


def test_noise_layout_follows_the_predictive_path(checkpoint: Callable[[str], Path]) -> None:
    model = load_checkpoint(checkpoint("lowrank")).model
    # in 5 -> 8 -> 8 -> 1: two rank-3 layers (LRT draws r then m per row), a mean-field head.
    assert noise_layout(model, 4, 6) == [
        ("noise_0", (4, 6, 3), "normal"),
        ("noise_1", (4, 6, 8), "normal"),
        ("noise_2", (4, 6, 3), "normal"),
        ("noise_3", (4, 6, 8), "normal"),
        ("noise_4", (4, 6, 1), "normal"),
    ]
    dropout = load_checkpoint(checkpoint("mcdropout")).model
    assert [kind for _, _, kind in noise_layout(dropout, 2, 3)] == ["uniform", "uniform"]


def test_metadata(checkpoint: Callable[[str], Path], exported: Callable[[str], Path]) -> None:
    ckpt = checkpoint("lowrank")
    manifest = load_checkpoint(ckpt).manifest
    session = OnnxPredictor(exported("lowrank"), manifest=manifest)
    meta = session.metadata
    assert meta["model_name"] == manifest.model_name
    assert meta["model_version"] == manifest.model_version
    assert meta["sha256"] == manifest.sha256
    assert [d["name"] for d in json.loads(meta["noise_layout"])] == [f"noise_{i}" for i in range(5)]
    stale = manifest.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ValueError, match="sha256"):
        OnnxPredictor(exported("lowrank"), manifest=stale)


def test_predict_is_batch_invariant(
    checkpoint: Callable[[str], Path], exported: Callable[[str], Path]
) -> None:
    """A block's answer is bit-identical alone and merged with other blocks (dynamic batching)."""
    ckpt = checkpoint("lowrank")
    session = OnnxPredictor(exported("lowrank"), intra_op_threads=1)
    x = _features(ckpt, 40)
    sizes, seeds = [13, 0, 20, 7], [7, 5, 8, None]
    merged = session.predict(x, samples=100, seeds=seeds, block_sizes=sizes)
    assert merged["mean"].shape == (40,)
    lo = 0
    for seed, size in zip(seeds[:3], sizes[:3], strict=True):
        if size == 0:
            continue
        alone = session.predict(x[lo : lo + size], samples=100, seeds=[seed], block_sizes=[size])
        for name in session.output_names:
            np.testing.assert_array_equal(merged[name][lo : lo + size], alone[name], err_msg=name)
        lo += size
    # One merged run is faster and agrees up to onnxruntime's rounding of reductions.
    fast = session.predict(x, samples=100, seeds=seeds, block_sizes=sizes, merge=True)
    for name in session.output_names:
        np.testing.assert_allclose(fast[name][:33], merged[name][:33], rtol=1e-3, atol=1e-6, err_msg=name)
    again = session.predict(x[:13], samples=100, seeds=[7], block_sizes=[13])
    np.testing.assert_array_equal(again["mean"], merged["mean"][:13])
    other = session.predict(x[:13], samples=100, seeds=[9], block_sizes=[13])
    assert not np.array_equal(other["mean"], merged["mean"][:13])
    with pytest.raises(ValueError, match="block sizes"):
        session.predict(x, samples=12, seeds=[7], block_sizes=[4])


def test_runtime_imports_without_torch(exported: Callable[[str], Path]) -> None:
    """The serving module must work on a machine without torch: block the import and run it."""
    out = exported("bbb")
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from model_core.export.onnx_runtime import OnnxPredictor\n"
        f"p = OnnxPredictor({str(out)!r})\n"
        "r = p.predict(np.zeros((3, p.in_features), np.float32), samples=4, seeds=[1], block_sizes=[3])\n"
        "assert r['mean'].shape == (3,)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_explicit_noise_refuses_shared_noise() -> None:
    src = ExplicitNoise([torch.zeros(2, 3, 4)])
    with pytest.raises(NoiseError, match="lrt"):
        src.shared(2, 4)
    with pytest.raises(NoiseError, match="width"):
        src.per_row(2, 5)
    assert src.per_row(2, 4).shape == (2, 3, 4)
    with pytest.raises(NoiseError, match="only 1"):
        src.per_row(2, 4)


def test_unsupported_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="registry-built"):
        export_model(LowRankBayesLinear(4, 3, 2), tmp_path / "layer.onnx")
    assert not (tmp_path / "layer.onnx").exists()


def test_a_sequence_or_text_model_is_refused_by_kind_not_by_method(tmp_path: Path) -> None:
    """The bundled forecast is a low-rank model (a supported method): the refusal must name its kind."""
    from model_core.models.registry import build_model
    from model_core.models.transformer import transformer_spec

    model = build_model(transformer_spec(Method.LOWRANK, vocab_size=50, max_len=8, rank=2))
    with pytest.raises(ExportError, match=r"'transformer' model .* only MLPs"):
        export_model(model, tmp_path / "text.onnx")


def test_ensemble_noise_is_per_member(checkpoint: Callable[[str], Path]) -> None:
    """A Bayesian ensemble's members each draw ceil(S / M) samples; the layout records M as groups."""
    _, layout = build_graph(load_checkpoint(checkpoint("lowrank-ens")).model)
    assert {n.groups for n in layout} == {2} and len(layout) == 10
    noise = draw_noise(layout, 5, [0], [4])
    assert noise[0].shape == (3, 4, 3)


def test_cli_end_to_end(
    checkpoint: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli" / "model.onnx"
    assert main(["export-onnx", str(checkpoint("lowrank")), str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "noise_0: (S, N, 3) normal" in printed
    assert OnnxPredictor(out).output_names[0] == "mean"


def test_cli_refuses_a_tampered_checkpoint(
    checkpoint: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "tampered"
    shutil.copytree(checkpoint("lowrank"), bad)
    weights = bad / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "never.onnx"
    assert main(["export-onnx", str(bad), str(out)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "lrbnn: error:" in err
    assert not out.exists()
    assert main(["export-onnx", str(tmp_path / "missing"), str(out)]) == 2
    assert "manifest" in capsys.readouterr().err
