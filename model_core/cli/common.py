"""Pieces shared by subcommands: the data directory flag and loading a task's splits."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from model_core.data.dataset import TabularSplits


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="data directory (default: $LRBNN_DATA_DIR)")


#: loader keyword options a task takes beyond (data_dir, seed), by task; ``lrbnn train`` sets them from
#: flags of the same name and records them as ``training.data_options``, which ``evaluate`` replays
DATA_OPTIONS: dict[str, tuple[str, ...]] = {"sentiment": ("min_freq", "max_vocab", "max_len")}


def data_options(args: argparse.Namespace, task: str) -> dict[str, int]:
    """The task's loader options given on the command line (absent or None: the loader's default)."""
    return {
        name: int(getattr(args, name))
        for name in DATA_OPTIONS.get(task, ())
        if getattr(args, name, None) is not None
    }


def fail(message: str, code: int = 2) -> int:
    print(f"lrbnn: error: {message}", file=sys.stderr)
    return code


def load_task_splits(args: argparse.Namespace, meta: dict[str, Any] | None = None) -> TabularSplits:
    """Splits for ``args.task`` (a manifest's recorded task and ``data_options`` when ``meta`` is given)."""
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
    options = dict(meta["data_options"]) if "data_options" in meta else data_options(args, task)
    loader: Callable[..., TabularSplits] = TASK_LOADERS[task]
    return loader(resolve_data_dir(args.data_dir), seed=seed, **options)
