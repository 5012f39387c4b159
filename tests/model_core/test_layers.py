import pytest
import torch
from torch import nn

from model_core.layers import (
    DeterministicLinear,
    LowRankBayesLinear,
    MCDropout,
    MeanFieldLinear,
    Mode,
    PredictiveContext,
    Rank1BayesLinear,
)
from model_core.models import ArchitectureSpec, Method, build_model
from model_core.sampling import Backend, NoiseSource


@pytest.mark.parametrize(("n", "m", "r"), [(44, 128, 15), (7, 3, 2), (128, 128, 1)])
def test_lowrank_parameter_count_is_2r_m_plus_n_plus_bias(n: int, m: int, r: int) -> None:
    layer = LowRankBayesLinear(n, m, r)
    assert layer.parameter_count() == 2 * r * (m + n) + 2 * m
    assert LowRankBayesLinear(n, m, r, bias=False).parameter_count() == 2 * r * (m + n)


def test_icu_architecture_matches_the_papers_parameter_counts() -> None:
    # Paper: 13.6k parameters for the low-rank ICU MLP, 112k for the 5-member deep ensemble.
    lowrank = build_model(ArchitectureSpec(method=Method.LOWRANK, in_features=44, out_features=1, rank=15))
    ensemble = build_model(
        ArchitectureSpec(method=Method.ENSEMBLE, in_features=44, out_features=1, members=5)
    )
    assert (
        lowrank.parameter_count()
        == 2 * 15 * (44 + 128) + 2 * 128 + 2 * 15 * (128 + 128) + 2 * 128 + 2 * 128 + 2
    )
    assert lowrank.parameter_count() == 13610
    assert ensemble.parameter_count() == 5 * (44 * 128 + 128 + 128 * 128 + 128 + 128 + 1)


@pytest.mark.parametrize(
    "layer",
    [
        LowRankBayesLinear(6, 5, 3),
        MeanFieldLinear(6, 5),
        Rank1BayesLinear(6, 5),
        DeterministicLinear(6, 5),
    ],
    ids=["lowrank", "meanfield", "rank1", "deterministic"],
)
def test_layer_shapes_in_every_mode(layer: nn.Module) -> None:
    x = torch.randn(4, 6)
    for mode in Mode:
        layer.set_mode(mode)  # type: ignore[operator]
        assert layer(x).shape == (4, 5)
    ctx = PredictiveContext(9, NoiseSource.from_seed(0, 4))
    # a deterministic layer keeps a shared input shared: (N, m), expanded by the model at the end
    shared = (4, 5) if isinstance(layer, DeterministicLinear) else (9, 4, 5)
    assert layer.predictive(x, ctx).shape == shared  # type: ignore[operator]
    assert layer.predictive(
        torch.randn(9, 4, 6), PredictiveContext(9, NoiseSource.from_seed(1, 4))
    ).shape == (
        9,
        4,
        5,
    )  # type: ignore[operator]
    kl = layer.kl()  # type: ignore[operator]
    assert kl.dim() == 0 and torch.isfinite(kl)


def test_mean_mode_is_deterministic_and_uses_mu_a_mu_b() -> None:
    layer = LowRankBayesLinear(5, 4, 2).set_mode(Mode.MEAN)
    x = torch.randn(3, 5)
    expected = x @ (layer.mu_a @ layer.mu_b.T).T + layer.bias_mu
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.equal(layer(x), layer(x))


def test_sample_mode_draws_a_new_weight_each_call_and_is_differentiable() -> None:
    layer = LowRankBayesLinear(5, 4, 2).set_mode(Mode.SAMPLE)
    x = torch.randn(3, 5)
    assert not torch.equal(layer(x), layer(x))
    (layer(x).sum() + layer.kl()).backward()
    assert layer.rho_a.grad is not None and layer.mu_b.grad is not None


def test_sigma_is_softplus_plus_floor_and_never_zero() -> None:
    layer = LowRankBayesLinear(5, 4, 2)
    with torch.no_grad():
        layer.rho_a.fill_(-100.0)
    post = layer.posterior()
    assert torch.all(post.sigma_a >= layer.sigma_floor)
    assert torch.allclose(post.sigma_b, nn.functional.softplus(layer.rho_b) + layer.sigma_floor)


def test_variance_matched_initialisation() -> None:
    # r v_A v_B should equal the Glorot variance 2/(n+m) (damping 1): check on a big layer.
    torch.manual_seed(0)
    n, m, r = 400, 300, 16
    layer = LowRankBayesLinear(n, m, r)
    w = layer.mean_weight()
    assert w.var().item() == pytest.approx(2 / (n + m), rel=0.1)
    sigma0 = 0.1 * (2 / (n + m) / r) ** 0.25
    assert layer.posterior().sigma_a.mean().item() == pytest.approx(sigma0, rel=1e-3)


def test_lr_svd_initialisation_reproduces_the_best_rank_r_approximation() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(12, 10)
    layer = LowRankBayesLinear.from_dense(dense, rank=4)
    u, s, vh = torch.linalg.svd(dense.weight.detach())
    best = (u[:, :4] * s[:4]) @ vh[:4]
    assert torch.allclose(layer.mean_weight(), best, atol=1e-5)
    assert torch.equal(layer.bias_mu.detach(), dense.bias.detach())  # type: ignore[union-attr]
    full = LowRankBayesLinear.from_dense(dense, rank=10)
    assert torch.allclose(full.mean_weight(), dense.weight, atol=1e-5)


def test_mc_dropout_predictive_masks_per_sample() -> None:
    drop = MCDropout(0.5)
    y = drop.predictive(torch.ones(3, 100), PredictiveContext(4, NoiseSource.from_seed(0, 3)))
    assert y.shape == (4, 3, 100)
    frac_zero = (y == 0).float().mean().item()
    assert 0.4 < frac_zero < 0.6 and set(torch.unique(y).tolist()) <= {0.0, 2.0}


def test_predictive_backends_agree_in_distribution_for_a_layer() -> None:
    torch.manual_seed(0)
    layer = LowRankBayesLinear(6, 3, 2)
    with torch.no_grad():
        layer.rho_a.fill_(-1.0)
        layer.rho_b.fill_(-1.0)
    x = torch.randn(1, 6)
    s = 6000
    outs = {
        b: layer.predictive(x, PredictiveContext(s, NoiseSource.from_seed(3, 1), b)).detach()[:, 0]
        for b in (Backend.MATERIALIZE, Backend.LRT)
    }
    ref, got = outs[Backend.MATERIALIZE], outs[Backend.LRT]
    se = torch.sqrt(ref.var(0) / s + got.var(0) / s)
    assert torch.all((ref.mean(0) - got.mean(0)).abs() < 5 * se)
    assert torch.allclose(ref.std(0), got.std(0), rtol=0.08)


@pytest.mark.parametrize("method", [Method.LOWRANK, Method.BBB, Method.RANK1, Method.LOWRANK_ENS])
def test_model_kl_is_the_sum_of_its_layers_kl(method: Method) -> None:
    """Regression test: a model whose layers sit in an nn.ModuleList must still count their KL."""
    from model_core.layers.base import BayesianModule
    from model_core.priors import GaussianPrior

    spec = ArchitectureSpec(
        method=method,
        in_features=5,
        hidden=[8, 8],
        out_features=1,
        rank=2 if method in (Method.LOWRANK, Method.LOWRANK_ENS) else None,
        members=2 if method is Method.LOWRANK_ENS else 1,
    )
    model = build_model(spec)
    leaves = [m for m in model.modules() if isinstance(m, BayesianModule) and not list(m.children())]
    for leaf in leaves:  # closed-form prior: the KL is deterministic, so sums compare exactly
        leaf.prior = GaussianPrior(1.0)  # type: ignore[assignment]
    expected = sum(float(leaf.kl().detach()) for leaf in leaves)
    assert expected > 0
    assert float(model.kl().detach()) == pytest.approx(expected, rel=1e-5)


def test_cached_sigma_is_reused_until_rho_changes_and_never_with_gradients() -> None:
    from model_core.layers.lowrank import LowRankBayesLinear

    layer = LowRankBayesLinear(5, 4, rank=2)
    with torch.no_grad():
        first = layer.posterior().sigma_a
        assert layer.posterior().sigma_a is first  # memoised: the same tensor object
        layer.rho_a.add_(0.5)  # an optimizer step: in place, the version counter moves
        second = layer.posterior().sigma_a
    assert second is not first
    assert torch.equal(second, torch.nn.functional.softplus(layer.rho_a.detach()) + layer.sigma_floor)
    with torch.inference_mode():  # the serving path: a plain tensor comes back, usable afterwards
        served = layer.posterior().sigma_a
    assert not served.is_inference()
    trained = layer.posterior().sigma_a  # gradient wanted: computed afresh, part of the graph
    assert trained.requires_grad and trained is not served
    trained.sum().backward()
    assert layer.rho_a.grad is not None and layer.rho_a.grad.abs().sum() > 0
