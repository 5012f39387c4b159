import math

import pytest
import torch

from model_core.priors import GaussianPrior, ScaleMixturePrior, prior_from_dict


def test_gaussian_kl_matches_hand_formula() -> None:
    # KL(N(0.5, 0.2²) || N(0, 1)) = 0.5 (0.04 + 0.25 - 1 - ln 0.04) = 0.5 (−0.71 + 3.2188758) = 1.2544379
    kl = GaussianPrior(1.0).kl(torch.tensor([0.5]), torch.tensor([0.2]))
    assert kl.item() == pytest.approx(0.5 * (0.04 + 0.25 - 1 - math.log(0.04)), rel=1e-6)


def test_kl_is_a_sum_over_entries() -> None:
    prior = GaussianPrior(0.7)
    mu, sigma = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    parts = sum(prior.kl(mu[i : i + 1], sigma[i : i + 1]) for i in range(5))
    assert prior.kl(mu, sigma).item() == pytest.approx(float(parts), rel=1e-5)


def test_monte_carlo_kl_converges_to_closed_form() -> None:
    # A mixture of two identical components is that Gaussian: its MC KL must average to the closed form.
    torch.manual_seed(0)
    mu, sigma = torch.randn(200) * 0.3, torch.rand(200) * 0.2 + 0.05
    closed = GaussianPrior(0.5).kl(mu, sigma)
    mixture = ScaleMixturePrior(0.5, 0.5, 0.5)
    draws = torch.stack([mixture.kl(mu, sigma) for _ in range(400)])
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - closed) < 5 * se + 1e-3


def test_scale_mixture_density_is_normalised_and_sigma2_is_a_std() -> None:
    prior = ScaleMixturePrior()
    assert prior.sigma2 == pytest.approx(math.exp(-6))
    grid = torch.linspace(-8, 8, 400001, dtype=torch.float64)
    dens = prior.log_prob(grid).exp()
    assert torch.trapezoid(dens, grid).item() == pytest.approx(1.0, abs=1e-4)
    # at 0 the narrow component dominates: 0.5 / (sqrt(2π) e^-6)
    assert prior.log_prob(torch.zeros(1, dtype=torch.float64)).exp().item() == pytest.approx(
        0.5 / math.sqrt(2 * math.pi) * (1 + math.exp(6)), rel=1e-6
    )


def test_prior_round_trip_and_validation() -> None:
    p = prior_from_dict(ScaleMixturePrior(0.25, 1.0, 0.01).to_dict())
    assert isinstance(p, ScaleMixturePrior) and p.pi == 0.25 and p.sigma2 == 0.01
    assert isinstance(prior_from_dict(GaussianPrior(2.0).to_dict()), GaussianPrior)
    with pytest.raises(ValueError, match="pi"):
        ScaleMixturePrior(pi=1.5)
