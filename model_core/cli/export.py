"""``lrbnn export-onnx CKPT OUT.onnx``: the predictive graph with its Monte Carlo noise as inputs."""

from __future__ import annotations

import argparse

from model_core.cli.common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (manifest.json + weights.safetensors)")
    p.add_argument("output", help="path of the ONNX file to write")


def run(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands do not pay for (or need) the ONNX exporter.
    from model_core.export.onnx import ExportError, export_onnx
    from model_core.export.onnx_runtime import OnnxPredictor, OnnxRuntimeError

    try:
        path = export_onnx(args.checkpoint, args.output)
        layout = OnnxPredictor(path, intra_op_threads=1).layout
    except (ExportError, OnnxRuntimeError) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot write {args.output}: {exc}")
    print(path)
    if not layout:
        print("noise inputs: none (deterministic model; the number of samples does not matter)")
    for item in layout:
        axis = item.to_json()["shape"][0]
        print(f"  {item.name}: ({axis}, N, {item.width}) {item.kind}")
    return 0
