"""``lrbnn serve``: the model server (see the ``service`` package, imported lazily)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from model_core.cli.common import fail

DEFAULT_REPOSITORY = "deploy/models"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-repository",
        default=None,
        help="model repository <repo>/<model>/<version>/ "
        f"(default: $LRBNN_MODEL_REPOSITORY or {DEFAULT_REPOSITORY})",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes sharing the port, about one core each (default: $LRBNN_WORKERS or 1); "
        "metrics are aggregated and hot reloads followed across them",
    )


def run(args: argparse.Namespace) -> int:
    repo = args.model_repository or os.environ.get("LRBNN_MODEL_REPOSITORY") or DEFAULT_REPOSITORY
    try:
        from service.main import serve
    except ImportError as exc:
        return fail(f"the service is not available (install the 'serve' extra): {exc}")
    if args.workers is not None and args.workers < 1:
        return fail(f"--workers must be >= 1, got {args.workers}")
    from pydantic import ValidationError

    try:
        return int(serve(repo, args.host, args.port, args.workers))
    except ValidationError as exc:  # a bad LRBNN_* value: name the variable, no traceback
        return fail("; ".join(_setting_error(e) for e in exc.errors()))


def _setting_error(error: Any) -> str:
    name = "LRBNN_" + "_".join(str(part) for part in error["loc"]).upper()
    return f"{name}: {error['msg']} (got {error.get('input')!r})"
