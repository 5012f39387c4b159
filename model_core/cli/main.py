"""The ``lrbnn`` command line: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence

from model_core.cli import bench, evaluate, export, reproduce, serve, train

SUBCOMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
] = {
    "train": (train.add_arguments, train.run, "train a model and write a calibrated checkpoint"),
    "evaluate": (evaluate.add_arguments, evaluate.run, "metrics of a checkpoint on its test and OOD splits"),
    "export-onnx": (
        export.add_arguments,
        export.run,
        "export a checkpoint to ONNX with the noise as an input",
    ),
    "serve": (serve.add_arguments, serve.run, "start the model server"),
    "bench": (bench.add_arguments, bench.run, "micro-benchmarks (sampling op)"),
    "reproduce": (reproduce.add_arguments, reproduce.run, "the paper's experiments"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrbnn", description="Low-rank Bayesian neural networks: train, evaluate, export and serve."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, _run, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["lrbnn", *argv])
    return SUBCOMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
