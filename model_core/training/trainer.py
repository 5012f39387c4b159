"""Minibatch training with Adam, early stopping on validation NLL and a progress bar."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from model_core.layers.base import BayesianModule, Mode
from model_core.models.spec import ArchitectureSpec, Likelihood
from model_core.predict import Prediction, predict
from model_core.training.distributed import current as current_dist
from model_core.training.elbo import elbo_loss


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20
    kl_beta: float = 1.0
    #: KL warm-up: the KL weight grows linearly to ``kl_beta`` over the first ``kl_warmup`` epochs
    #: (β·e/kl_warmup in epoch e); 0 = the full weight from the start
    kl_warmup: int = 0
    class_weights: Tensor | None = None
    seed: int = 0
    device: str = "cpu"
    val_samples: int = 32
    progress: bool = True


@dataclass
class TrainResult:
    best_epoch: int
    best_val_nll: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def kl_weight(epoch: int, cfg: TrainConfig) -> float:
    """The KL weight of 1-based ``epoch`` under ``cfg``'s warm-up."""
    if cfg.kl_warmup <= 0:
        return cfg.kl_beta
    return cfg.kl_beta * min(1.0, epoch / cfg.kl_warmup)


def predictive_accuracy(pred: Prediction, y: Tensor, likelihood: Likelihood) -> float | None:
    """Accuracy of the Monte Carlo predictive mean (classification; None for regression)."""
    if likelihood is Likelihood.GAUSSIAN:
        return None
    if likelihood is Likelihood.BERNOULLI:
        return float(((pred.mean.reshape(-1) >= 0.5).to(y.dtype) == y.reshape(-1)).float().mean())
    return float((pred.mean.argmax(1) == y.long()).float().mean())


def predictive_nll(pred: Prediction, y: Tensor, likelihood: Likelihood) -> float:
    """NLL of the Monte Carlo predictive distribution (Gaussian moment match for regression)."""
    if likelihood is Likelihood.GAUSSIAN:
        var = pred.variance.clamp_min(1e-12)
        return float((0.5 * torch.log(2 * math.pi * var) + 0.5 * (y - pred.mean) ** 2 / var).mean())
    if likelihood is Likelihood.BERNOULLI:
        p = pred.mean.clamp(1e-7, 1 - 1e-7)
        return float(-(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean())
    p = pred.mean.gather(1, y.long().view(-1, 1)).clamp_min(1e-7)
    return float(-torch.log(p).mean())


def fit(
    model: BayesianModule,
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    cfg: TrainConfig,
) -> TrainResult:
    """Train in place; the returned model state is the epoch with the lowest validation NLL.

    Under a KL warm-up (``cfg.kl_warmup``) early stopping starts counting only once the full KL weight
    is reached: an epoch that is better only because its objective weighted the KL less is still
    chosen if it has the lowest validation NLL, but patience does not run out during the warm-up.
    """
    spec: ArchitectureSpec = model.spec  # type: ignore[assignment]
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_val, y_val = x_val.to(device), y_val.to(device)
    ddp = current_dist()
    train_module: torch.nn.Module = model
    if ddp.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_module = DistributedDataParallel(model)
    y_fit = (
        (y_train - spec.target_loc) / spec.target_scale if spec.likelihood is Likelihood.GAUSSIAN else y_train
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x_train.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    weights_by_class = None if cfg.class_weights is None else cfg.class_weights.to(device)
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(
        range(1, cfg.epochs + 1),
        disable=not cfg.progress or not ddp.is_main,
        desc=f"train {spec.method.value}",
        unit="ep",
    )
    epoch = 0
    for epoch in bar:
        model.train()
        model.set_mode(Mode.SAMPLE)
        perm = torch.randperm(n, generator=gen).to(device)
        total, batches = 0.0, 0
        beta = kl_weight(epoch, cfg)
        for lo in range(0, n, cfg.batch_size):
            batch = perm[lo : lo + cfg.batch_size]
            idx = batch[ddp.rank :: ddp.world_size]  # this rank's shard of the global minibatch
            xb, yb = x_train[idx], y_fit[idx]
            w = None if weights_by_class is None else weights_by_class[y_train[idx].long()]
            norm = len(batch) / ddp.world_size
            out = train_module(xb)
            loss, nll = elbo_loss(out, yb, spec.likelihood, model.kl(), n, beta, w, norm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(nll)
            batches += 1
        model.eval()
        val_pred = predict(model, x_val, samples=cfg.val_samples, seed=cfg.seed + epoch)
        val_nll = predictive_nll(val_pred, y_val, spec.likelihood)
        row = {"epoch": epoch, "train_nll": total / max(batches, 1), "val_nll": val_nll, "kl_weight": beta}
        accuracy = predictive_accuracy(val_pred, y_val, spec.likelihood)
        if accuracy is not None:
            row["val_accuracy"] = accuracy
        history.append(row)
        bar.set_postfix(train_nll=f"{total / max(batches, 1):.4f}", val_nll=f"{val_nll:.4f}")
        if val_nll < best[0] - 1e-5:
            best = (val_nll, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - max(best[1], cfg.kl_warmup) >= cfg.patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(best[1], best[0], epoch, time.perf_counter() - start, history)
