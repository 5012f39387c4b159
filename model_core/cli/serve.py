"""``lrbnn serve``: the model server (see the ``service`` package)."""

from __future__ import annotations

import argparse

from model_core.cli.common import fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-repository", default="deploy/models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)


def run(args: argparse.Namespace) -> int:
    try:
        from service.main import serve  # type: ignore[import-not-found]
    except ImportError as exc:
        return fail(f"the service is not available: {exc}")
    return int(serve(args.model_repository, args.host, args.port))
