"""``lrbnn evaluate CKPT --json``: metrics on the checkpoint's test and OOD splits."""

from __future__ import annotations

import argparse
import json

from model_core.cli.common import add_data_dir, fail, load_task_splits


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory (weights.safetensors + manifest.json)")
    p.add_argument("--samples", type=int, default=None, help="Monte Carlo samples (default: the manifest's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prediction noise")
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        metavar="N",
        help="only N evenly spaced rows of each evaluated split (test, OOD, near-OOD): the quick check"
        " whose metrics a manifest records under training.check (default: every row)",
    )
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from model_core.checkpoint import CheckpointError, load_checkpoint
    from model_core.evaluation import evaluate_checkpoint

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        return fail(str(exc))
    meta = dict(ckpt.manifest.training)
    args.task = meta.get("task")
    splits = load_task_splits(args, meta)
    if args.rows is not None and args.rows <= 0:
        return fail(f"--rows must be positive, got {args.rows}")
    report = evaluate_checkpoint(ckpt, splits, samples=args.samples, seed=args.seed, rows=args.rows)
    if args.json:
        print(json.dumps(report, default=float))
    else:
        for section in ("test", "ood"):
            for k, v in report.get(section, {}).items():
                print(f"{section:5s} {k:20s} {v:.4f}")
    return 0
