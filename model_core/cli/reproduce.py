"""``lrbnn reproduce``: the paper's experiments (tables and plots)."""

from __future__ import annotations

import argparse

from model_core.cli.common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="icu")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    return fail("reproduce is not implemented yet (tracked by the reproduction issue)")
