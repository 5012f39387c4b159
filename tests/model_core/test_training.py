import numpy as np
import pytest
import torch

from model_core.models import ArchitectureSpec, Likelihood, Method, build_model
from model_core.predict import predict
from model_core.training import TrainConfig, fit
from model_core.training.elbo import elbo_loss
from model_core.training.trainer import predictive_nll


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    logit = 3 * x[:, 0] - 2 * x[:, 1]
    y = (torch.rand(n, generator=g) < torch.sigmoid(logit)).float()
    return x, y


@pytest.mark.parametrize(
    "method", [Method.LOWRANK, Method.BBB, Method.RANK1, Method.ENSEMBLE, Method.MCDROPOUT]
)
def test_training_lowers_validation_nll(method: Method) -> None:
    torch.manual_seed(0)
    spec = ArchitectureSpec(
        method=method,
        in_features=4,
        hidden=[16],
        out_features=1,
        rank=2 if method is Method.LOWRANK else None,
        members=2 if method is Method.ENSEMBLE else 1,
    )
    model = build_model(spec)
    x, y = _data(800, 0)
    xv, yv = _data(300, 1)
    before = predictive_nll(predict(model, xv, samples=16, seed=0), yv, Likelihood.BERNOULLI)
    result = fit(
        model, x, y, xv, yv, TrainConfig(epochs=15, batch_size=64, lr=1e-2, progress=False, val_samples=16)
    )
    after = predictive_nll(predict(model, xv, samples=16, seed=0), yv, Likelihood.BERNOULLI)
    assert after < before - 0.1
    assert result.best_val_nll == min(h["val_nll"] for h in result.history)


def test_early_stopping_restores_the_best_epoch() -> None:
    torch.manual_seed(0)
    model = build_model(
        ArchitectureSpec(method=Method.DETERMINISTIC, in_features=4, hidden=[64], out_features=1)
    )
    x, y = _data(60, 0)  # tiny data: overfits quickly
    xv, yv = _data(300, 1)
    result = fit(
        model, x, y, xv, yv, TrainConfig(epochs=300, patience=5, lr=3e-2, batch_size=16, progress=False)
    )
    assert result.epochs_run < 300
    assert result.epochs_run - result.best_epoch == 5
    final = predictive_nll(predict(model, xv, samples=1, seed=0), yv, Likelihood.BERNOULLI)
    assert final == pytest.approx(result.best_val_nll, abs=1e-6)


def test_kl_is_weighted_per_example() -> None:
    out = torch.zeros(1, 4, 1)
    target = torch.ones(4)
    kl = torch.tensor(100.0)
    loss, nll = elbo_loss(out, target, Likelihood.BERNOULLI, kl, n_train=50, beta=1.0)
    assert loss.item() == pytest.approx(np.log(2) + 100 / 50, rel=1e-6)
    assert nll.item() == pytest.approx(np.log(2), rel=1e-6)


def test_class_weights_change_the_loss() -> None:
    out = torch.zeros(4, 1)
    target = torch.tensor([0.0, 0.0, 0.0, 1.0])
    w = torch.tensor([0.5, 0.5, 0.5, 2.5])
    weighted, _ = elbo_loss(out, target, Likelihood.BERNOULLI, torch.tensor(0.0), 4, weights=w)
    assert weighted.item() == pytest.approx(np.log(2) * w.mean().item(), rel=1e-6)


def test_regression_training_fits_heteroscedastic_noise() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1500, 1, generator=g) * 4 - 2
    y = 3 * x[:, 0] + 50 + torch.randn(1500, generator=g) * (0.2 + 0.8 * (x[:, 0] > 0))
    spec = ArchitectureSpec(
        method=Method.LOWRANK,
        in_features=1,
        hidden=[32, 32],
        out_features=2,
        rank=4,
        likelihood=Likelihood.GAUSSIAN,
        target_loc=float(y.mean()),
        target_scale=float(y.std()),
    )
    model = build_model(spec)
    fit(
        model,
        x[:1000],
        y[:1000],
        x[1000:],
        y[1000:],
        TrainConfig(epochs=60, lr=5e-3, patience=15, progress=False),
    )
    p = predict(model, torch.tensor([[-1.0], [1.0]]), samples=64, seed=0)
    assert p.mean[0].item() == pytest.approx(47, abs=0.6) and p.mean[1].item() == pytest.approx(53, abs=0.6)
    assert p.aleatoric[1] > 2 * p.aleatoric[0]  # noisier half of the input space
