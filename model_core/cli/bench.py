"""``lrbnn bench sampling [--json]``: the sampling-op micro-benchmark."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["sampling"], help="which benchmark")
    p.add_argument("--json", action="store_true", help="print the JSON object after the table")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats")


def run(args: argparse.Namespace) -> int:
    from model_core.sampling.bench import run_sampling_bench  # type: ignore[attr-defined]

    run_sampling_bench(json_out=args.json, quick=args.quick)
    return 0
