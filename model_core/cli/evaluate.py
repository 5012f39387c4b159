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
    p.add_argument(
        "--mc-replicates",
        type=int,
        default=1,
        metavar="R",
        help="also evaluate R - 1 more times with other noise seeds and report, per metric, the standard"
        " deviation over the R evaluations (the Monte Carlo error at this S) under mc_error; the metrics"
        " themselves stay those of --seed (default 1: no replicates)",
    )
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from model_core.checkpoint import CheckpointError, load_checkpoint
    from model_core.evaluation import REPLICATE_SEED_STRIDE, evaluate_checkpoint, monte_carlo_error

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        return fail(str(exc))
    meta = dict(ckpt.manifest.training)
    args.task = meta.get("task")
    splits = load_task_splits(args, meta)
    if args.rows is not None and args.rows <= 0:
        return fail(f"--rows must be positive, got {args.rows}")
    if args.mc_replicates < 1:
        return fail(f"--mc-replicates must be at least 1, got {args.mc_replicates}")
    reports = [
        evaluate_checkpoint(
            ckpt, splits, samples=args.samples, seed=args.seed + r * REPLICATE_SEED_STRIDE, rows=args.rows
        )
        for r in range(args.mc_replicates)
    ]
    report = reports[0]
    if len(reports) > 1:
        report["mc_error"] = {"replicates": len(reports), **monte_carlo_error(reports)}
    if args.json:
        print(json.dumps(report, default=float))
    else:
        errors = report.get("mc_error", {})
        for section in ("test", "ood"):
            for k, v in report.get(section, {}).items():
                mc = errors.get(section, {}).get(k)
                print(
                    f"{section:5s} {k:20s} {v:.4f}" + (f" ± {mc:.4f} (Monte Carlo)" if mc is not None else "")
                )
    return 0
