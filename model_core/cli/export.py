"""``lrbnn export-onnx CKPT OUT.onnx`` (implemented with the ONNX runtime backend)."""

from __future__ import annotations

import argparse

from model_core.cli.common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("output")


def run(args: argparse.Namespace) -> int:
    return fail("export-onnx is not implemented yet (the ONNX backend comes with the microservice issue)")
