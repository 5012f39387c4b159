"""Export a checkpoint's S-sample predictive computation to ONNX, with the Monte Carlo noise as inputs.

Why explicit noise: a torch-free server (onnxruntime) must reproduce torch's predictions, and random ops
inside an ONNX graph can neither be seeded per request block nor matched to torch's generator. So the graph
is a pure function ``(x, noise_0, noise_1, ...) -> summaries`` and the caller draws the noise (see
:mod:`model_core.export.onnx_runtime`). The noise layout (names, widths, normal or uniform) is found by
running the model's predictive path once with a recording noise source, so it always follows the code.

Only the per-example ``lrt`` backend is exported: its noise is (S, N, width) per layer, so rows stay
independent and S and N are dynamic axes of the graph.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model_core.checkpoint import CheckpointError, load_checkpoint
from model_core.export.explicit_noise import ExplicitNoise, RecordingNoise
from model_core.export.onnx_runtime import (
    FORMAT_TAG,
    INPUT_NAME,
    META_FORMAT,
    META_LAYOUT,
    META_OUTPUTS,
    NoiseInput,
    OnnxPredictor,
    layout_to_json,
)
from model_core.layers.base import BayesianModule, Mode, PredictiveContext, expand_samples
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.models.ensemble import Ensemble
from model_core.models.mlp import BayesMLP
from model_core.models.spec import ArchitectureSpec, Method
from model_core.predict import summarize
from model_core.sampling import cpu
from model_core.sampling.types import Backend

OPSET = 18
#: Example sizes for tracing: not 0 or 1, which exporters specialise (S and N must stay symbolic).
EXAMPLE_S, EXAMPLE_N = 5, 7
SUPPORTED_METHODS = (
    Method.LOWRANK,
    Method.LRSVD,
    Method.BBB,
    Method.DETERMINISTIC,
    Method.MCDROPOUT,
    Method.RANK1,
    Method.ENSEMBLE,
    Method.LOWRANK_ENS,
)
BASE_OUTPUTS = ("mean", "variance", "epistemic", "aleatoric", "entropy", "ood_score")


class ExportError(ValueError):
    """A checkpoint that cannot be exported (unsupported method, unreadable checkpoint, failed export)."""


def traced_predictive(model: BayesianModule, x: Tensor, ctx: PredictiveContext) -> Tensor:
    """``model.predictive`` with each low-rank layer calling the ``lrt`` scheme directly.

    Why: under ``torch.export`` :func:`~model_core.sampling.api.sample_lowrank` swaps in an opaque custom
    op that derives its noise from row seeds, which an ONNX graph cannot run. This mirrors
    ``BayesMLP.predictive`` and ``Ensemble.predictive``; :func:`build_graph` checks that both give the
    same outputs. For a Bayesian ensemble ``ctx.samples`` is the per-member count ceil(S / M).
    """
    if isinstance(model, Ensemble):
        if not model.bayesian_members:
            return torch.stack([member(x) for member in model.members])
        return torch.cat([traced_predictive(member, x, ctx) for member in model.members], dim=0)  # type: ignore[arg-type]
    assert isinstance(model, BayesMLP)
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        if isinstance(layer, LowRankBayesLinear):
            x = cpu.lrt(x, layer.posterior(), ctx.samples, ctx.noise)
        else:
            x = layer.predictive(x, ctx)  # type: ignore[operator]
        if i < last:
            x = model.act(x)
            if model.dropouts is not None:
                x = model.dropouts[i].predictive(x, ctx)  # type: ignore[operator]
    return expand_samples(x, ctx.samples)


def _check_method(model: BayesianModule) -> ArchitectureSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ArchitectureSpec):
        raise ExportError("the model has no architecture spec; only registry-built models can be exported")
    if not isinstance(model, (BayesMLP, Ensemble)):
        raise ExportError(
            f"a {spec.kind!r} model ({type(model).__name__}) cannot be exported to ONNX: only MLPs "
            "(tabular models) and ensembles of them are; serve sequence and text models with the torch "
            "backend"
        )
    if spec.method not in SUPPORTED_METHODS:
        supported = ", ".join(m.value for m in SUPPORTED_METHODS)
        raise ExportError(f"method {spec.method.value!r} cannot be exported to ONNX (supported: {supported})")
    return spec


def noise_layout(model: BayesianModule, samples: int, n_rows: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(input name, shape, "normal" | "uniform") of every noise draw of the predictive path, in order.

    Found by running ``model.predictive`` once with the ``lrt`` backend and a recording noise source.
    """
    rec = RecordingNoise(n_rows)
    model.set_mode(Mode.SAMPLE)
    x = torch.zeros(n_rows, _in_features(model))
    with torch.no_grad():
        model.predictive(x, PredictiveContext(samples, rec, Backend.LRT))
    return [(f"noise_{i}", shape, kind) for i, (shape, kind) in enumerate(rec.record)]


def _in_features(model: BayesianModule) -> int:
    spec = getattr(model, "spec", None)
    if isinstance(spec, ArchitectureSpec):
        return spec.in_features
    raise ExportError("the model has no architecture spec; only registry-built models can be exported")


def output_names(spec: ArchitectureSpec) -> list[str]:
    """The graph's outputs: the predictive moments (intervals are the calibration's, applied by the
    service with :func:`model_core.conformal.served_interval`)."""
    return list(BASE_OUTPUTS)


class PredictiveGraph(nn.Module):
    """forward(x, *noise) -> predictive summaries; the module that is exported (and the torch reference).

    S is read from the noise tensors' first axis (for a Bayesian ensemble: samples per member). A model
    without noise uses S = 1: a deterministic net's samples are identical, and a deterministic ensemble
    always gives one sample per member.
    """

    def __init__(self, model: BayesianModule, layout: Sequence[NoiseInput]) -> None:
        super().__init__()
        self.spec = _check_method(model)
        self.model = model
        self.kinds = [n.kind for n in layout]
        self.names = output_names(self.spec)

    def forward(self, x: Tensor, *noise: Tensor) -> tuple[Tensor, ...]:
        samples = noise[0].shape[0] if noise else 1
        src = ExplicitNoise(noise, self.kinds)
        out = traced_predictive(self.model, x, PredictiveContext(samples, src, Backend.LRT))  # type: ignore[arg-type]
        src.check_exhausted()
        pred = summarize(out, self.spec)
        return tuple(getattr(pred, name) for name in self.names)


def build_graph(model: BayesianModule) -> tuple[PredictiveGraph, list[NoiseInput]]:
    """The exportable wrapper and its noise layout (widths and kinds, S and N left symbolic)."""
    model.set_mode(Mode.SAMPLE)
    spec = _check_method(model)
    groups = spec.members if spec.method is Method.LOWRANK_ENS else 1
    recorded = noise_layout(model, 2 * groups, 3)
    if any(shape[0] != 2 for _, shape, _ in recorded):
        raise ExportError(f"unexpected noise sample axis in {recorded} (expected S / {groups} = 2)")
    layout = [NoiseInput(name, shape[-1], kind, groups) for name, shape, kind in recorded]
    graph = PredictiveGraph(model, layout).eval()
    x, *noise = _example_inputs(graph.spec, layout)
    with torch.no_grad():
        ctx = PredictiveContext(EXAMPLE_S * groups, ExplicitNoise(noise), Backend.LRT)
        ref = model.predictive(x, ctx)
        ctx = PredictiveContext(EXAMPLE_S, ExplicitNoise(noise), Backend.LRT)
        got = traced_predictive(graph.model, x, ctx)
    if not torch.allclose(ref, got, rtol=1e-5, atol=1e-6):
        raise ExportError("the exported path no longer matches model.predictive; update traced_predictive")
    return graph, layout


def _example_inputs(spec: ArchitectureSpec, layout: Sequence[NoiseInput]) -> tuple[Tensor, ...]:
    # Sizes other than 0 and 1 (which exporters specialise) so that S and N stay symbolic.
    s, n = EXAMPLE_S, EXAMPLE_N
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, spec.in_features, generator=gen)
    noise = [
        torch.randn(s, n, item.width, generator=gen)
        if item.kind == "normal"
        else torch.rand(s, n, item.width, generator=gen)
        for item in layout
    ]
    return (x, *noise)


def _export_dynamo(graph: PredictiveGraph, args: tuple[Tensor, ...], layout: Sequence[NoiseInput]) -> object:
    from torch.export import Dim

    s, n = Dim("S", min=1), Dim("N", min=1)
    # forward(x, *noise): the varargs are one tuple in the signature, so their shapes nest in a tuple.
    shapes = ({0: n}, tuple({0: s, 1: n} for _ in layout)) if layout else ({0: n},)
    # The exporter logs warnings about optional packages (torchvision) that do not concern this graph.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                args,
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME, *(i.name for i in layout)],
                dynamic_shapes=shapes,
                optimize=True,
                verbose=False,
            )
    finally:
        registration_log.setLevel(level)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto  # type: ignore[attr-defined]


def _export_torchscript(
    graph: PredictiveGraph, args: tuple[Tensor, ...], layout: Sequence[NoiseInput]
) -> object:
    import onnx

    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "N"}}
    for item in layout:
        axes[item.name] = {0: "S", 1: "N"}
    for name in graph.names:
        axes[name] = {0: "N"}
    buf: Any = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            args,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME, *(i.name for i in layout)],
            output_names=graph.names,
            dynamic_axes=axes,  # type: ignore[arg-type]
        )
    return onnx.load_from_string(buf.getvalue())


def _name_outputs(proto: object, names: Sequence[str]) -> None:
    """Give the graph outputs their public names through Identity nodes.

    Why: exporters name intermediate values after the ops that made them (a ReduceMean may be called
    ``mean``), and two outputs may be the same value (``ood_score`` is ``epistemic`` for classifiers), so
    naming outputs at export time can break single assignment. Internal values that clash are renamed.
    """
    import onnx

    assert isinstance(proto, onnx.ModelProto)
    g = proto.graph
    if len(g.output) != len(names):
        raise ExportError(f"the exported graph has {len(g.output)} outputs, expected {len(names)}")
    if [o.name for o in g.output] == list(names):
        return
    wanted = set(names)
    rename = {}
    for node in g.node:
        for out in node.output:
            if out in wanted:
                rename[out] = f"{out}__internal"
    for init in g.initializer:
        if init.name in wanted:
            rename[init.name] = f"{init.name}__internal"
            init.name = rename[init.name]
    for node in g.node:
        node.input[:] = [rename.get(v, v) for v in node.input]
        node.output[:] = [rename.get(v, v) for v in node.output]
    for info in g.value_info:
        info.name = rename.get(info.name, info.name)
    old_outputs = list(g.output)
    del g.output[:]
    for public, value in zip(names, old_outputs, strict=True):
        source = rename.get(value.name, value.name)
        g.node.append(onnx.helper.make_node("Identity", [source], [public], name=f"output_{public}"))
        info = onnx.ValueInfoProto()
        info.CopyFrom(value)
        info.name = public
        g.output.append(info)


def export_model(
    model: BayesianModule, out_path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> tuple[Path, list[NoiseInput]]:
    """Export a loaded model; returns the written path and the noise layout."""
    import onnx

    graph, layout = build_graph(model)
    args = _example_inputs(graph.spec, layout)
    errors: list[str] = []
    proto = None
    for name, exporter in (("dynamo", _export_dynamo), ("torchscript", _export_torchscript)):
        try:
            with torch.no_grad():
                proto = exporter(graph, args, layout)
            break
        except ExportError:
            raise
        except Exception as exc:  # exporters raise many unrelated types; try the next one, report all
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            logging.getLogger(__name__).debug("ONNX exporter %s failed", name, exc_info=True)
    if proto is None:
        raise ExportError("ONNX export failed (" + "; ".join(errors) + ")")
    assert isinstance(proto, onnx.ModelProto)
    _name_outputs(proto, graph.names)
    meta = {
        META_FORMAT: FORMAT_TAG,
        META_LAYOUT: layout_to_json(layout),
        META_OUTPUTS: json.dumps(graph.names),
        "method": graph.spec.method.value,
        "likelihood": graph.spec.likelihood.value,
        **(metadata or {}),
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, out)
    return out, layout


def export_onnx(checkpoint_dir: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Verify and load a checkpoint, then write its predictive graph (with metadata) to ``out_path``."""
    try:
        loaded = load_checkpoint(Path(checkpoint_dir))
    except CheckpointError as exc:
        raise ExportError(f"cannot load checkpoint: {exc}") from None
    m = loaded.manifest
    meta = {
        "model_name": m.model_name,
        "model_version": m.model_version,
        "sha256": m.sha256,  # load_checkpoint verified that the weights file hashes to this
        "task": m.task.value,
    }
    path, _ = export_model(loaded.model, out_path, meta)
    return path


__all__ = [
    "SUPPORTED_METHODS",
    "ExportError",
    "OnnxPredictor",  # re-exported for callers that look here; torch-free code imports onnx_runtime
    "PredictiveGraph",
    "build_graph",
    "export_model",
    "export_onnx",
    "noise_layout",
    "output_names",
]
