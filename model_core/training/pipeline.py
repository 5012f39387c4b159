"""From a data set to a calibrated, verified checkpoint: what ``lrbnn train`` runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_core.calibration import ConformalInputs, NoveltyScores, calibrate
from model_core.checkpoint.io import load_checkpoint, save_checkpoint, write_manifest
from model_core.checkpoint.manifest import (
    FORMAT_VERSION,
    FeatureDistribution,
    InputSchema,
    Manifest,
    OutputSchema,
    Task,
)
from model_core.conformal import REPORT_INTERVAL_LEVEL, SERVED_INTERVAL_LEVEL
from model_core.data.air import SequenceSplits
from model_core.data.dataset import TabularSplits
from model_core.data.sentiment import TextSplits
from model_core.evaluation import evaluate_checkpoint
from model_core.feature_reference import fit_feature_reference, fit_text_reference, latest_hour
from model_core.layers.base import BayesianModule
from model_core.layers.deterministic import DeterministicLinear
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.layers.meanfield import MeanFieldLinear
from model_core.metrics import interval_scale
from model_core.models.lstm import BayesLSTM
from model_core.models.mlp import BayesMLP
from model_core.models.registry import build_model
from model_core.models.spec import ArchitectureSpec, Likelihood, Method
from model_core.models.transformer import BayesTransformer, Pooling, lrsvd_init, transformer_spec
from model_core.novelty import NoveltyDetector, fit_novelty
from model_core.predict import Prediction, predict
from model_core.training.distributed import current as current_dist
from model_core.training.trainer import TrainConfig, TrainResult, fit, seed_everything

#: The paper's S per task where affordable (ICU: 100 at serving; training validation uses fewer).
DEFAULT_SAMPLES = 100
#: ``TrainOptions.hidden``'s default (the MLP's); sequence tasks read it as "use the LSTM default".
MLP_DEFAULT_HIDDEN: tuple[int, ...] = (128, 128)
#: The air task's LSTM: two layers of H = 64 (the paper's size).
LSTM_DEFAULT_HIDDEN: tuple[int, ...] = (64, 64)
#: ``TrainOptions.rank``'s default (the ICU paper's r = 15); text tasks read it as the paper's r = 16.
MLP_DEFAULT_RANK = 15
#: Regression: every level whose validation width factor the manifest records (``interval_scales``).
INTERVAL_LEVELS = (SERVED_INTERVAL_LEVEL, REPORT_INTERVAL_LEVEL)
TEXT_DEFAULT_RANK = 16
#: Text and sequence tasks: Monte Carlo samples of the per-epoch validation NLL (a transformer or an
#: S-sample LSTM pass over the validation set cost several training epochs' time at the default 32).
SEQUENCE_VAL_SAMPLES = 8


@dataclass
class TrainOptions:
    method: Method
    rank: int | None = 15
    hidden: tuple[int, ...] = MLP_DEFAULT_HIDDEN
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
    #: explicit rank per layer (None = not factorised); overrides ``rank``'s default placement
    ranks: tuple[int | None, ...] | None = None
    #: text tasks: transformer size overrides (keys of ``model_core.models.transformer.DEFAULT_TRANSFORMER``)
    transformer: dict[str, int] | None = None
    #: text tasks: pooling of the encoder's token states for the head ([CLS] or mean)
    pooling: Pooling = Pooling.CLS
    #: text tasks, low-rank methods: initial posterior scale η of the factors (None: DEFAULT_ETA)
    eta: float | None = None
    #: epochs over which the KL weight grows linearly to 1 (0: no warm-up)
    kl_warmup: int = 0


#: Fraction of the validation split held out of training (early stopping included) for calibration:
#: the OOD thresholds, the novelty reference and the conformal q̂ are fitted on it alone.
CALIBRATION_FRACTION = 0.5


@dataclass(frozen=True)
class CalibrationSplit:
    """Validation rows that training never saw: the network input, the novelty input, the labels."""

    x: np.ndarray
    z: np.ndarray
    y: np.ndarray
    positions: np.ndarray  # into the validation split


def split_calibration(
    splits: TabularSplits, seed: int, fraction: float = CALIBRATION_FRACTION
) -> tuple[TabularSplits, CalibrationSplit]:
    """The splits with validation reduced to the early-stopping rows, and the calibration rows.

    A seeded permutation of the validation split (the same ``seed`` as training): early stopping reads
    the validation NLL after every epoch, i.e. it selects the model on those rows, so the conformal and
    OOD calibration must use rows it never read for the guarantees to hold.
    """
    import dataclasses

    n = len(splits.y_val)
    order = np.random.default_rng([seed, 0xCA1]).permutation(n)
    n_cal = round(fraction * n)
    if n_cal < 2 or n - n_cal < 2:
        raise ValueError(f"the validation split ({n} rows) is too small to hold out a calibration split")
    cal, keep = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    z_val = splits.novelty_input("val")
    unclipped = dict(splits.unclipped)
    if "val" in unclipped:
        unclipped["val"] = unclipped["val"][keep]
    fit = dataclasses.replace(splits, x_val=splits.x_val[keep], y_val=splits.y_val[keep], unclipped=unclipped)
    return fit, CalibrationSplit(splits.x_val[cal], z_val[cal], splits.y_val[cal], cal)


def _implausible(splits: TabularSplits, z: np.ndarray) -> np.ndarray | None:
    """Rows with a value outside its plausible range (tabular and sequence inputs; text has none)."""
    if isinstance(splits, TextSplits):
        return None
    return splits.preprocessor.implausible_rows(z)


def feature_reference(splits: TabularSplits) -> list[FeatureDistribution]:
    """The training distribution of each served drift feature (``model_core.feature_reference``)."""
    z = splits.novelty_input("train")
    if isinstance(splits, TextSplits):
        return fit_text_reference(z)
    if isinstance(splits, SequenceSplits):
        return fit_feature_reference(splits.preprocessor, latest_hour(z))
    return fit_feature_reference(splits.preprocessor, z)


def _fit_novelty(model: BayesianModule, splits: TabularSplits) -> NoveltyDetector:
    kind = (
        "text"
        if isinstance(splits, TextSplits)
        else "sequence"
        if isinstance(splits, SequenceSplits)
        else "tabular"
    )
    pad = int(splits.tokenizer.to_dict()["pad_id"]) if isinstance(splits, TextSplits) else 0
    # the tail score, chosen by validation on the ICU model (docs/model.md); not evaluated for the
    # window summaries and text embeddings, which keep the distance alone
    tail = splits.preprocessor.numeric_columns if kind == "tabular" else None
    return fit_novelty(kind, splits.novelty_input("train"), model=model, pad_id=pad, tail_columns=tail)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def make_spec(splits: TabularSplits, opts: TrainOptions) -> ArchitectureSpec:
    if isinstance(splits, TextSplits):
        rank = TEXT_DEFAULT_RANK if opts.rank in (None, MLP_DEFAULT_RANK) else opts.rank
        return transformer_spec(
            opts.method,
            vocab_size=splits.tokenizer.vocab_size,
            max_len=splits.n_features,
            rank=rank,
            members=opts.members if opts.method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else 1,
            dropout=opts.dropout,
            eta=opts.eta,
            pooling=opts.pooling,
            **(opts.transformer or {}),
        )
    regression = splits.task == "regression"
    loc = float(splits.y_train.mean()) if regression else 0.0
    scale = float(splits.y_train.std()) if regression else 1.0
    uses_rank = opts.method in (Method.LOWRANK, Method.LOWRANK_ENS, Method.LRSVD)
    sequence = isinstance(splits, SequenceSplits)
    hidden = opts.hidden
    if sequence and tuple(hidden) == MLP_DEFAULT_HIDDEN:  # the CLI's MLP default -> the LSTM's
        hidden = LSTM_DEFAULT_HIDDEN
    return ArchitectureSpec(
        kind="lstm" if sequence else "mlp",
        method=opts.method,
        in_features=splits.n_features,
        hidden=list(hidden),
        out_features=2 if regression else 1,
        likelihood=Likelihood.GAUSSIAN if regression else Likelihood.BERNOULLI,
        rank=opts.rank if uses_rank else None,
        ranks=list(opts.ranks) if opts.ranks is not None and uses_rank else [],
        members=opts.members if opts.method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else 1,
        dropout=opts.dropout,
        target_loc=loc,
        target_scale=scale if scale > 0 else 1.0,
        extra=_sequence_normalization(splits) if sequence else {},
    )


#: Floor of a sequence input's standardisation scale (on the [0, 1] MinMax scale): rare-event counters
#: (hours of rain / snow) would otherwise reach z-values in the hundreds.
MIN_INPUT_SCALE = 0.05


def _sequence_normalization(splits: TabularSplits) -> dict[str, Any]:
    """Per-input mean and std over the training windows, for the LSTM's internal standardisation."""
    x = splits.x_train.reshape(-1, splits.x_train.shape[-1]).astype(np.float64)
    std = np.maximum(x.std(axis=0), MIN_INPUT_SCALE)
    return {"input_loc": [float(v) for v in x.mean(axis=0)], "input_scale": [float(v) for v in std]}


def _svd_init(model: BayesMLP | BayesLSTM, dense: BayesMLP | BayesLSTM) -> None:
    """LR-SVD: copy a trained deterministic MLP / LSTM into the low-rank model (truncated SVD per layer)."""
    targets = model.linears() if isinstance(model, BayesLSTM) else list(model.layers)
    sources = dense.linears() if isinstance(dense, BayesLSTM) else list(dense.layers)
    for target, source in zip(targets, sources, strict=True):
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
        kl_warmup=opts.kl_warmup,
        seed=opts.seed,
        device=opts.device,
        progress=opts.progress,
        class_weights=_tensor(splits.class_weights())
        if opts.class_weights and splits.task == "binary"
        else None,
    )
    if isinstance(splits, (TextSplits, SequenceSplits)):
        cfg.val_samples = min(cfg.val_samples, SEQUENCE_VAL_SAMPLES)
    data = (_tensor(splits.x_train), _tensor(splits.y_train), _tensor(splits.x_val), _tensor(splits.y_val))
    y_dtype = torch.float32
    data = (data[0], data[1].to(y_dtype), data[2], data[3].to(y_dtype))
    model = build_model(spec)
    if opts.method is Method.LRSVD:
        dense = build_model(spec.model_copy(update={"method": Method.DETERMINISTIC, "rank": None}))
        fit(dense, *data, cfg)
        if isinstance(model, BayesTransformer) and isinstance(dense, BayesTransformer):
            lrsvd_init(model, dense)
            return model, fit(model, *data, cfg)
        assert isinstance(model, (BayesMLP, BayesLSTM)) and isinstance(dense, (BayesMLP, BayesLSTM))
        _svd_init(model, dense)
    result = fit(model, *data, cfg)
    return model, result


def _input_schema(splits: TabularSplits) -> dict[str, Any]:
    """Tabular: the fitted preprocessing; sequence: kind "sequence" with the window spec as well."""
    if isinstance(splits, SequenceSplits):
        return InputSchema.model_validate(splits.input_schema()).model_dump(mode="json")
    if isinstance(splits, TextSplits):
        return InputSchema(kind="text", preprocessing=splits.tokenizer.to_dict()).model_dump(mode="json")
    return InputSchema(kind="tabular", preprocessing=splits.preprocessor.to_dict()).model_dump(mode="json")


def train_checkpoint(
    splits: TabularSplits,
    opts: TrainOptions,
    out: str | Path,
    training_meta: dict[str, Any] | None = None,
    keep: dict[str, Prediction] | None = None,
) -> Manifest | None:
    """Train, calibrate on the validation split, and write a verified checkpoint to ``out``.

    Training (early stopping included) uses the validation rows :func:`split_calibration` keeps; the
    OOD thresholds, the novelty reference and the conformal q̂ are fitted on the held-out rest. Under
    ``torchrun`` every rank trains; only rank 0 calibrates and writes (others return ``None``).
    """
    fit_splits, cal = split_calibration(splits, opts.seed)
    model, result = train_model(fit_splits, opts)
    if not current_dist().is_main:
        return None
    spec: ArchitectureSpec = model.spec  # type: ignore[assignment]
    task = Task.REGRESSION if splits.task == "regression" else Task.BINARY
    model = model.cpu()
    val = predict(model, _tensor(cal.x), samples=opts.samples, seed=opts.seed)
    scales: dict[str, float] = {}
    y_cal = cal.y.astype(np.float64)
    if task is Task.REGRESSION:
        for level in INTERVAL_LEVELS:
            scales[str(level)] = interval_scale(val.mean.numpy(), val.variance.numpy(), y_cal, level=level)
    novelty = _fit_novelty(model, fit_splits)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from model_core.checkpoint.files import sha256_file

    nov_path = novelty.save(out)
    calib, drift = calibrate(
        val.ood_score.numpy(),
        task,
        opts.samples,
        interval_scale=scales.get(str(REPORT_INTERVAL_LEVEL), 1.0),
        interval_level=REPORT_INTERVAL_LEVEL,
        interval_scales=scales,
        novelty=NoveltyScores(
            novelty.score(cal.z), novelty.features.value, novelty.dim, sha256_file(nov_path), novelty.meta
        ),
        implausible=_implausible(splits, cal.z),
        conformal=ConformalInputs(y_cal, val.mean.numpy(), val.variance.numpy()),
    )
    drift.features = feature_reference(splits)
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
        "history": [{k: round(v, 6) for k, v in row.items()} for row in result.history],
        "split_sizes": {**splits.sizes, "val": len(fit_splits.y_val), "calibration": len(cal.y)},
        "calibration_split": (
            f"{len(cal.y)} of the {len(splits.y_val)} validation rows (seeded permutation, seed "
            f"{opts.seed}), never read by training or early stopping: OOD thresholds, novelty reference, "
            "conformal quantile"
        ),
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
        "input_schema": _input_schema(splits),
        "output_schema": output.model_dump(mode="json"),
        "calibration": calib.model_dump(mode="json"),
        "drift_reference": drift.model_dump(mode="json"),
        "training": meta,
        "sha256": "0" * 64,
    }
    saved = save_checkpoint(out, model, manifest)
    # Record the held-out metrics exactly as ``lrbnn evaluate`` computes them (same samples and seeds).
    report = evaluate_checkpoint(load_checkpoint(out), splits, keep=keep)
    saved.training["metrics"] = {
        k: v
        for k, v in report.items()
        if k in ("test", "selective", "samples", "conformal") or k.startswith("ood")
    }
    write_manifest(out, saved)
    return saved
