"""Serve an exported ONNX predictive graph with onnxruntime and numpy only (no torch).

Why a separate module: the model server loads this on machines without torch, so it imports only numpy,
onnxruntime and the standard library (and ``model_core.export`` whose ``__init__`` imports nothing).

The graph (see :mod:`model_core.export.onnx`) takes the preprocessed features ``x`` (N, n) and one input
per noise draw of the predictive path, shaped (S, N, width). Noise is drawn here, per block of rows, with
``numpy.random.default_rng(seed)``; each block's generator draws every noise input in layout order, so a
request's answer depends only on its own rows and seed, never on what it was batched with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

#: Metadata keys written by the exporter and read here.
META_FORMAT = "lrbnn_format"
META_LAYOUT = "noise_layout"
META_OUTPUTS = "outputs"
FORMAT_TAG = "lrbnn-onnx-predictive/1"
INPUT_NAME = "x"
NOISE_KINDS = ("normal", "uniform")


class OnnxRuntimeError(ValueError):
    """An ONNX file or a request that the predictor cannot serve."""


@dataclass(frozen=True)
class NoiseInput:
    """One noise input of the graph: standard normal or Uniform(0, 1), shape (ceil(S / groups), N, width).

    ``groups`` is 1 except for a Bayesian ensemble of M members, where each member draws ceil(S / M)
    samples (the graph then averages over M·ceil(S / M) samples, as ``model_core.predict`` does).
    """

    name: str
    width: int
    kind: str
    groups: int = 1

    def sample_axis(self, samples: int) -> int:
        return -(-int(samples) // self.groups)

    def to_json(self) -> dict[str, Any]:
        axis = "S" if self.groups == 1 else f"ceil(S/{self.groups})"
        return {"name": self.name, "shape": [axis, "N", self.width], "kind": self.kind, "groups": self.groups}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> NoiseInput:
        try:
            shape, kind, groups = d["shape"], d["kind"], int(d.get("groups", 1))
            if len(shape) != 3 or kind not in NOISE_KINDS or groups < 1:
                raise ValueError
            return NoiseInput(str(d["name"]), int(shape[2]), str(kind), groups)
        except (KeyError, TypeError, ValueError):
            raise OnnxRuntimeError(f"bad noise layout entry {d!r}") from None


def layout_to_json(layout: Sequence[NoiseInput]) -> str:
    return json.dumps([n.to_json() for n in layout])


def layout_from_json(text: str) -> list[NoiseInput]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxRuntimeError(f"noise layout metadata is not JSON ({exc})") from None
    if not isinstance(raw, list):
        raise OnnxRuntimeError("noise layout metadata must be a JSON list")
    return [NoiseInput.from_json(d) for d in raw]


def draw_noise(
    layout: Sequence[NoiseInput], samples: int, seeds: Sequence[int | None], block_sizes: Sequence[int]
) -> list[np.ndarray]:
    """Noise arrays (S, N, width) in layout order; block b's rows come from ``default_rng(seeds[b])``.

    Within a block the generator draws the inputs in layout order, so a block's noise does not depend on
    the other blocks.
    """
    if samples < 1:
        raise OnnxRuntimeError(f"samples must be >= 1, got {samples}")
    if len(seeds) != len(block_sizes) or not block_sizes:
        raise OnnxRuntimeError("need one seed per block and at least one block")
    if any(int(b) < 0 for b in block_sizes):
        raise OnnxRuntimeError("block sizes must be non-negative")
    per_block: list[list[np.ndarray]] = []
    for seed, size in zip(seeds, block_sizes, strict=True):
        rng = np.random.default_rng(seed)
        arrays = []
        for item in layout:
            shape = (item.sample_axis(samples), int(size), item.width)
            if item.kind == "normal":
                arrays.append(rng.standard_normal(shape, dtype=np.float32))
            else:
                arrays.append(rng.random(shape, dtype=np.float32))
        per_block.append(arrays)
    if len(per_block) == 1:
        return per_block[0]
    return [np.concatenate([blk[i] for blk in per_block], axis=1) for i in range(len(layout))]


def _field(manifest: Any, name: str) -> Any:
    if isinstance(manifest, Mapping):
        return manifest.get(name)
    return getattr(manifest, name, None)


class OnnxPredictor:
    """An onnxruntime session over an exported predictive graph, drawing its noise with numpy."""

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        manifest: Any | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        """Open the graph on the CPU provider; ``manifest`` (a Manifest or its dict), when given, must
        name the same model, version and weights hash as the graph's metadata (a stale export is refused).
        """
        self.path = Path(onnx_path)
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise OnnxRuntimeError(f"{self.path}: cannot load ONNX graph ({exc})") from None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get(META_FORMAT) != FORMAT_TAG:
            raise OnnxRuntimeError(f"{self.path}: not an lrbnn predictive export (no {META_FORMAT!r} tag)")
        self.layout = layout_from_json(self.metadata.get(META_LAYOUT, "[]"))
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        expected = [INPUT_NAME, *(n.name for n in self.layout)]
        if names != expected:
            raise OnnxRuntimeError(f"{self.path}: graph inputs {names} do not match the layout {expected}")
        width = inputs[0].shape[1]
        self.in_features: int | None = width if isinstance(width, int) else None
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        #: The serving runtime contract's backend label.
        self.device = "onnxruntime"
        if manifest is not None:
            for key in ("model_name", "model_version", "sha256"):
                want, got = _field(manifest, key), self.metadata.get(key)
                if want is not None and str(want) != got:
                    raise OnnxRuntimeError(
                        f"{self.path}: {key} {got!r} in the graph does not match the manifest's {want!r}"
                    )

    @property
    def model_name(self) -> str | None:
        return self.metadata.get("model_name")

    @property
    def model_version(self) -> str | None:
        return self.metadata.get("model_version")

    def run(self, x: np.ndarray, noise: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on given noise arrays (in layout order): the hook for parity tests."""
        feeds: dict[str, np.ndarray] = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
        if len(noise) != len(self.layout):
            raise OnnxRuntimeError(f"expected {len(self.layout)} noise arrays, got {len(noise)}")
        for item, arr in zip(self.layout, noise, strict=True):
            feeds[item.name] = np.ascontiguousarray(arr, dtype=np.float32)
        outs = self.session.run(self.output_names, feeds)
        return {name: np.asarray(v) for name, v in zip(self.output_names, outs, strict=True)}

    def predict(
        self,
        x: np.ndarray,
        samples: int,
        seeds: Sequence[int | None],
        block_sizes: Sequence[int] | None = None,
        merge: bool = False,
    ) -> dict[str, np.ndarray]:
        """Predictive summaries for preprocessed features ``x`` (N, n) from S samples.

        Rows are split into ``block_sizes`` (default: one block) with one seed each; ``None`` seeds draw
        fresh entropy. Each block runs the graph on its own by default, because onnxruntime vectorises
        its reductions differently for different N, which changes the last bits (up to ~1e-5 relative
        for the mutual information); ``merge=True`` runs the batch once, faster but only equal up to
        that rounding. Graphs without noise inputs (deterministic models and ensembles) ignore
        ``samples``; a Bayesian ensemble of M members uses M·ceil(S / M) samples.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise OnnxRuntimeError(f"x must be (N, n), got shape {x.shape}")
        if self.in_features is not None and x.shape[1] != self.in_features:
            raise OnnxRuntimeError(f"x has {x.shape[1]} features, the graph expects {self.in_features}")
        if x.shape[0] == 0:
            raise OnnxRuntimeError("x has no rows")
        sizes = [x.shape[0]] if block_sizes is None else [int(b) for b in block_sizes]
        if sum(sizes) != x.shape[0]:
            raise OnnxRuntimeError(f"block sizes sum to {sum(sizes)} but x has {x.shape[0]} rows")
        if merge or len(sizes) == 1:
            return self.run(x, draw_noise(self.layout, int(samples), seeds, sizes))
        if len(seeds) != len(sizes):
            raise OnnxRuntimeError("need one seed per block")
        parts: list[dict[str, np.ndarray]] = []
        lo = 0
        for seed, size in zip(seeds, sizes, strict=True):
            if size > 0:  # an empty block contributes no rows (and no noise)
                block = x[lo : lo + size]
                parts.append(self.run(block, draw_noise(self.layout, int(samples), [seed], [size])))
            lo += size
        return {name: np.concatenate([p[name] for p in parts], axis=0) for name in self.output_names}


__all__ = [
    "NoiseInput",
    "OnnxPredictor",
    "OnnxRuntimeError",
    "draw_noise",
    "layout_from_json",
    "layout_to_json",
]
