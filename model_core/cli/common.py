"""Pieces shared by subcommands: the data directory flag and loading a task's splits."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from model_core.data.dataset import TabularSplits


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="data directory (default: $LRBNN_DATA_DIR)")


def fail(message: str, code: int = 2) -> int:
    print(f"lrbnn: error: {message}", file=sys.stderr)
    return code


def load_task_splits(args: argparse.Namespace, meta: dict[str, Any] | None = None) -> TabularSplits:
    """Splits for ``args.task`` (or a manifest's recorded task when ``meta`` is given)."""
    from model_core.data import TASK_LOADERS, load_csv, resolve_data_dir

    meta = meta or {}
    task = meta.get("task") or args.task
    seed = int(meta.get("seed", getattr(args, "seed", 0)))
    if task == "csv":
        path = meta.get("csv") or args.csv
        target = meta.get("target") or args.target
        if not path or not target:
            raise SystemExit("lrbnn: error: --task csv needs --csv PATH and --target COLUMN")
        regression = bool(meta.get("regression", getattr(args, "regression", False)))
        return load_csv(
            path,
            target,
            task="regression" if regression else "binary",
            ood_query=meta.get("ood_query", getattr(args, "ood_query", None)),
            seed=seed,
        )
    if task not in TASK_LOADERS:
        raise SystemExit(
            f"lrbnn: error: task {task!r} is not available yet (available: {sorted(TASK_LOADERS)})"
        )
    return TASK_LOADERS[task](resolve_data_dir(args.data_dir), seed=seed)
