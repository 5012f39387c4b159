"""``lrbnn train``: train a model on a task and write a calibrated checkpoint directory."""

from __future__ import annotations

import argparse
import json
import sys

from model_core.cli.common import DATA_OPTIONS, add_data_dir, data_options, load_task_splits
from model_core.models.spec import DEFAULT_ETA, DEFAULT_TRANSFORMER, Method, Pooling

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
    p.add_argument(
        "--kl-warmup",
        type=int,
        default=0,
        metavar="E",
        help="grow the KL weight linearly to 1 over the first E epochs; patience counts only after them"
        " (default 0: full weight from the start)",
    )
    add_text_arguments(p)
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


def add_text_arguments(p: argparse.ArgumentParser) -> None:
    """``--task sentiment`` only: the Transformer's size, pooling and initial σ, and the tokenizer."""
    g = p.add_argument_group("text tasks (--task sentiment)")
    sizes = DEFAULT_TRANSFORMER
    g.add_argument("--d-model", type=int, default=None, help=f"model width (default {sizes['d_model']})")
    g.add_argument("--layers", type=int, default=None, help=f"encoder blocks (default {sizes['n_layers']})")
    g.add_argument(
        "--heads",
        type=int,
        default=None,
        help=f"attention heads, dividing --d-model (default {sizes['n_heads']})",
    )
    g.add_argument("--ff", type=int, default=None, help=f"FFN hidden width (default {sizes['d_ff']})")
    g.add_argument(
        "--pooling",
        choices=[m.value for m in Pooling],
        default=Pooling.CLS.value,
        help="what the head reads: the [CLS] position or the mean over the tokens (default cls)",
    )
    g.add_argument(
        "--eta",
        type=float,
        default=None,
        help="low-rank methods: initial posterior scale of the factors, sigma0 = eta * (var_W / r) ** 0.25"
        f" (default {DEFAULT_ETA})",
    )
    g.add_argument(
        "--min-freq",
        type=int,
        default=None,
        help="tokenizer: keep words seen this often in training (default 2)",
    )
    g.add_argument(
        "--max-vocab",
        type=int,
        default=None,
        help="tokenizer: at most this many ids, specials included (default 20000)",
    )
    g.add_argument(
        "--max-len", type=int, default=None, help="tokenizer: ids per text with [CLS] (default 48)"
    )


#: ``lrbnn train`` flags -> ``DEFAULT_TRANSFORMER`` keys
TRANSFORMER_FLAGS = {"d_model": "d_model", "layers": "n_layers", "heads": "n_heads", "ff": "d_ff"}


def transformer_overrides(args: argparse.Namespace) -> dict[str, int] | None:
    """The Transformer sizes given on the command line (None: every size at its default)."""
    given = {
        key: int(getattr(args, flag))
        for flag, key in TRANSFORMER_FLAGS.items()
        if getattr(args, flag) is not None
    }
    return given or None


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
        kl_warmup=args.kl_warmup,
        transformer=transformer_overrides(args),
        pooling=Pooling(args.pooling),
        eta=args.eta,
        samples=args.samples,
        device=args.device,
        progress=not args.no_progress,
        model_name=args.model_name or (args.task if args.task != "csv" else "csv-model"),
        model_version=args.model_version,
    )
    meta = {"task": args.task, "command": args.command_line, **_csv_meta(args)}
    if args.task in DATA_OPTIONS:
        meta["data_options"] = data_options(args, args.task)
    manifest = train_checkpoint(splits, opts, args.out, meta)
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
