"""``lrbnn train``: train a model on a task and write a calibrated checkpoint directory."""

from __future__ import annotations

import argparse
import json
import sys

from model_core.cli.common import add_data_dir, load_task_splits
from model_core.models.spec import Method

TASKS = ("icu", "air", "sentiment", "csv")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, required=True, help="data set / task")
    p.add_argument("--method", choices=[m.value for m in Method], default="lowrank")
    p.add_argument("--rank", type=int, default=15, help="factor rank r for low-rank methods (default 15)")
    p.add_argument(
        "--hidden", type=int, nargs="+", default=[128, 128], help="hidden widths (default 128 128)"
    )
    p.add_argument("--members", type=int, default=5, help="ensemble members (ensemble, lowrank-ens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--epochs", type=int, default=200, help="maximum epochs (early stopping on validation NLL)"
    )
    p.add_argument(
        "--patience", type=int, default=20, help="epochs without validation improvement before stopping"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--samples", type=int, default=100, help="Monte Carlo samples for calibration and serving default"
    )
    p.add_argument("--class-weights", action="store_true", help="inverse-frequency class weights in the loss")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--model-name", default=None, help="model name in the manifest (default: the task)")
    p.add_argument("--model-version", default="1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_dir(p)
    p.add_argument("--csv", default=None, help="--task csv: path of the CSV file")
    p.add_argument("--target", default=None, help="--task csv: target column")
    p.add_argument("--regression", action="store_true", help="--task csv: regression target")
    p.add_argument("--ood-query", default=None, help="--task csv: pandas query selecting OOD rows")
    p.add_argument("--out", required=True, help="checkpoint directory to write")


def run(args: argparse.Namespace) -> int:
    from model_core.training.distributed import init_from_env, shutdown
    from model_core.training.pipeline import TrainOptions, train_checkpoint

    dist_ctx = init_from_env(args.device)

    splits = load_task_splits(args)
    opts = TrainOptions(
        method=Method(args.method),
        rank=args.rank,
        hidden=tuple(args.hidden),
        members=args.members,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        class_weights=args.class_weights,
        samples=args.samples,
        device=args.device,
        progress=not args.no_progress,
        model_name=args.model_name or (args.task if args.task != "csv" else "csv-model"),
        model_version=args.model_version,
    )
    manifest = train_checkpoint(
        splits, opts, args.out, {"task": args.task, "command": args.command_line, **_csv_meta(args)}
    )
    if dist_ctx.enabled:
        shutdown()
    if manifest is None:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print(
        json.dumps(
            {
                "out": args.out,
                "method": args.method,
                "parameter_count": manifest.parameter_count,
                "best_val_nll": manifest.training.get("best_val_nll"),
                "epochs_run": manifest.training.get("epochs_run"),
                "train_seconds": manifest.training.get("train_seconds"),
            }
        ),
        file=sys.stdout,
    )
    return 0


def _csv_meta(args: argparse.Namespace) -> dict[str, object]:
    if args.task != "csv":
        return {}
    return {
        "csv": args.csv,
        "target": args.target,
        "regression": args.regression,
        "ood_query": args.ood_query,
    }
