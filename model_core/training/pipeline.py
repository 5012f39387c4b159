"""From a data set to a calibrated, verified checkpoint: what ``lrbnn train`` runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_core.calibration import calibrate
from model_core.checkpoint.io import save_checkpoint
from model_core.checkpoint.manifest import FORMAT_VERSION, InputSchema, Manifest, OutputSchema, Task
from model_core.data.dataset import TabularSplits
from model_core.layers.base import BayesianModule
from model_core.layers.deterministic import DeterministicLinear
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.layers.meanfield import MeanFieldLinear
from model_core.models.mlp import BayesMLP
from model_core.models.registry import build_model
from model_core.models.spec import ArchitectureSpec, Likelihood, Method
from model_core.predict import predict
from model_core.training.trainer import TrainConfig, TrainResult, fit, seed_everything

#: The paper's S per task where affordable (ICU: 100 at serving; training validation uses fewer).
DEFAULT_SAMPLES = 100


@dataclass
class TrainOptions:
    method: Method
    rank: int | None = 15
    hidden: tuple[int, ...] = (128, 128)
    members: int = 5
    seed: int = 0
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 20
    class_weights: bool = False
    dropout: float = 0.1
    samples: int = DEFAULT_SAMPLES
    device: str = "cpu"
    progress: bool = True
    model_name: str = "model"
    model_version: str = "1"


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def make_spec(splits: TabularSplits, opts: TrainOptions) -> ArchitectureSpec:
    regression = splits.task == "regression"
    loc = float(splits.y_train.mean()) if regression else 0.0
    scale = float(splits.y_train.std()) if regression else 1.0
    uses_rank = opts.method in (Method.LOWRANK, Method.LOWRANK_ENS, Method.LRSVD)
    return ArchitectureSpec(
        method=opts.method,
        in_features=splits.n_features,
        hidden=list(opts.hidden),
        out_features=2 if regression else 1,
        likelihood=Likelihood.GAUSSIAN if regression else Likelihood.BERNOULLI,
        rank=opts.rank if uses_rank else None,
        members=opts.members if opts.method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else 1,
        dropout=opts.dropout,
        target_loc=loc,
        target_scale=scale if scale > 0 else 1.0,
    )


def _svd_init(model: BayesMLP, dense: BayesMLP) -> None:
    """LR-SVD: copy a trained deterministic MLP into the low-rank model (truncated SVD per layer)."""
    for target, source in zip(model.layers, dense.layers, strict=True):
        assert isinstance(source, DeterministicLinear)
        lin = source.linear
        if isinstance(target, LowRankBayesLinear):
            init = LowRankBayesLinear.from_dense(lin, target.rank, prior=target.prior)
            target.load_state_dict(init.state_dict())
        elif isinstance(target, MeanFieldLinear):
            with torch.no_grad():
                target.weight_mu.copy_(lin.weight)
                if target.bias_mu is not None and lin.bias is not None:
                    target.bias_mu.copy_(lin.bias)


def train_model(splits: TabularSplits, opts: TrainOptions) -> tuple[BayesianModule, TrainResult]:
    seed_everything(opts.seed)
    spec = make_spec(splits, opts)
    cfg = TrainConfig(
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        lr=opts.lr,
        patience=opts.patience,
        seed=opts.seed,
        device=opts.device,
        progress=opts.progress,
        class_weights=_tensor(splits.class_weights())
        if opts.class_weights and splits.task == "binary"
        else None,
    )
    data = (_tensor(splits.x_train), _tensor(splits.y_train), _tensor(splits.x_val), _tensor(splits.y_val))
    y_dtype = torch.float32
    data = (data[0], data[1].to(y_dtype), data[2], data[3].to(y_dtype))
    model = build_model(spec)
    if opts.method is Method.LRSVD:
        dense = build_model(spec.model_copy(update={"method": Method.DETERMINISTIC, "rank": None}))
        fit(dense, *data, cfg)
        assert isinstance(model, BayesMLP) and isinstance(dense, BayesMLP)
        _svd_init(model, dense)
    result = fit(model, *data, cfg)
    return model, result


def train_checkpoint(
    splits: TabularSplits, opts: TrainOptions, out: str | Path, training_meta: dict[str, Any] | None = None
) -> Manifest:
    """Train, calibrate on the validation split, and write a verified checkpoint to ``out``."""
    model, result = train_model(splits, opts)
    spec: ArchitectureSpec = model.spec  # type: ignore[assignment]
    task = Task.REGRESSION if splits.task == "regression" else Task.BINARY
    val = predict(model.cpu(), _tensor(splits.x_val), samples=opts.samples, seed=opts.seed)
    calib, drift = calibrate(val.ood_score.numpy(), task, opts.samples)
    if splits.task == "regression":
        output = OutputSchema(target=splits.target_name)
    else:
        labels = splits.label_names or ["0", "1"]
        output = OutputSchema(labels=list(labels), positive_label=str(labels[-1]), target=splits.target_name)
    meta = {
        "dataset": splits.dataset,
        "data_description": splits.description,
        "seed": opts.seed,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_nll": None if math.isinf(result.best_val_nll) else result.best_val_nll,
        "train_seconds": round(result.seconds, 2),
        "split_sizes": splits.sizes,
        "options": {
            k: (v.value if hasattr(v, "value") else v) for k, v in vars(opts).items() if k != "progress"
        },
    }
    if training_meta:
        meta.update(training_meta)
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_name": opts.model_name,
        "model_version": opts.model_version,
        "task": task.value,
        "architecture": spec.model_dump(mode="json"),
        "parameter_count": model.parameter_count(),
        "input_schema": InputSchema(kind="tabular", preprocessing=splits.preprocessor.to_dict()).model_dump(
            mode="json"
        ),
        "output_schema": output.model_dump(mode="json"),
        "calibration": calib.model_dump(mode="json"),
        "drift_reference": drift.model_dump(mode="json"),
        "training": meta,
        "sha256": "0" * 64,
    }
    return save_checkpoint(out, model, manifest)
