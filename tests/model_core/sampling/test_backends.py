"""Every CPU backend against ``materialize``: moments, reproducibility, batch invariance, the auto rule."""

from __future__ import annotations

import pytest
import torch
from lowrank_sampling_helpers import assert_same_distribution, random_posterior

from model_core.sampling import (
    Backend,
    NoiseError,
    NoiseSource,
    choose_backend,
    cpu,
    draw_factor_samples,
    sample_lowrank,
)
from model_core.sampling.backends import available_backends, work
from model_core.sampling.cache import packed_a_t, packed_b_flat
from model_core.sampling.types import FactorPosterior, FactorSamples

S = 4000
CPU_BACKENDS = ["factored", "lrt", "lrt-a", "cached", "auto"]
# (m, n, r, N): sizes that are not multiples of any tile, r = 1 and not a power of two, N = 1
SHAPES = [(45, 20, 3, 1), (17, 33, 5, 3), (70, 9, 1, 2)]


def _x(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _run(backend: str, x: torch.Tensor, post: FactorPosterior, samples: int, seed: int) -> torch.Tensor:
    rows = x.shape[-2]
    cache = draw_factor_samples(post, samples, NoiseSource.from_seed(seed + 1000, rows))
    with torch.no_grad():
        return sample_lowrank(x, post, samples, NoiseSource.from_seed(seed, rows), backend, cache)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "m{}-n{}-r{}-N{}".format(*s))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_moments_match_materialize(backend: str, shape: tuple[int, int, int, int]) -> None:
    m, n, r, rows = shape
    post = random_posterior(m, n, r, seed=m + n + r)
    x = _x((rows, n), seed=rows)
    ref = _run("materialize", x, post, S, seed=1)
    y = _run(backend, x, post, S, seed=2)
    assert y.shape == (S, rows, m)
    assert_same_distribution(y, ref, example=rows - 1, cols=(0, m - 1), label=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_moments_with_per_sample_inputs(backend: str) -> None:
    """x of shape (S, N, n) (a later layer): each sample sees its own activations."""
    m, n, r, rows = 23, 14, 4, 2
    post = random_posterior(m, n, r, seed=5, bias=False)
    x = _x((rows, n), seed=3).expand(S, rows, n) * (
        1 + 0.5 * _x((S, 1, 1), seed=4)
    )  # random scale per sample
    ref = _run("materialize", x, post, S, seed=1)
    y = _run(backend, x, post, S, seed=2)
    assert_same_distribution(y, ref, example=0, cols=(0, 1), label=backend)


def test_covariance_test_has_power() -> None:
    """The cross-output covariance is clearly non-zero here, so a one-stage shortcut would fail it."""
    m, n, r, rows = 45, 20, 3, 1
    post = random_posterior(m, n, r, seed=m + n + r)
    y = _run("materialize", _x((rows, n), seed=rows), post, S, seed=1).double()
    c = y - y.mean(0)
    prod = c[:, 0, 0] * c[:, 0, m - 1]
    assert prod.mean().abs() > 10 * prod.std() / S**0.5


@pytest.mark.parametrize("backend", ["materialize", *CPU_BACKENDS])
def test_same_seed_same_result(backend: str) -> None:
    post = random_posterior(19, 11, 3, seed=0)
    x = _x((4, 11), seed=0)
    a = _run(backend, x, post, 64, seed=7)
    b = _run(backend, x, post, 64, seed=7)
    c = _run(backend, x, post, 64, seed=8)
    assert torch.equal(a, b)
    if backend != "cached":  # cached draws were made with seed + 1000 for both
        assert not torch.equal(a, c)


def test_noise_from_custom_sources_is_never_overwritten() -> None:
    """A noise source that hands out its own tensors (like the ONNX exporter's) keeps them unchanged."""
    handed: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recorded(NoiseSource):
        def shared(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            t = super().shared(*shape, dtype=dtype)
            handed.append((t, t.clone()))
            return t

    post = random_posterior(9, 7, 2, seed=0)
    for backend in ("factored", "lrt-a"):
        handed.clear()
        sample_lowrank(
            _x((3, 7), seed=0), post, 16, Recorded([torch.Generator().manual_seed(0)], [3]), backend
        )
        assert handed and all(torch.equal(t, copy) for t, copy in handed)


@pytest.mark.parametrize("backend", ["factored", "lrt", "lrt-a"])
def test_gradients_flow_through_the_schemes(backend: str) -> None:
    """Posterior parameters that require grad: no in-place trick may break autograd."""
    post = random_posterior(9, 7, 2, seed=0)
    leaves = [t.clone().requires_grad_() for t in (post.mu_a, post.sigma_a, post.mu_b, post.sigma_b)]
    assert post.bias_mu is not None and post.bias_sigma is not None
    bias = [post.bias_mu.clone().requires_grad_(), post.bias_sigma.clone().requires_grad_()]
    grad_post = FactorPosterior(*leaves, *bias)
    y = sample_lowrank(_x((3, 7), seed=0), grad_post, 16, NoiseSource.from_seed(0, 3), backend)
    y.square().mean().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in [*leaves, *bias])


def test_lrt_noise_stream_is_the_noise_sources() -> None:
    """lrt draws exactly noise.per_row(S, r) then noise.per_row(S, m): the ONNX exporter relies on it."""
    m, n, r, rows, samples = 11, 6, 3, 2, 5
    post = random_posterior(m, n, r, seed=0)
    x = _x((rows, n), seed=0)
    y = sample_lowrank(x, post, samples, NoiseSource.from_seed(4, rows), "lrt")
    g = torch.Generator().manual_seed(4)
    e1 = torch.randn((samples, rows, r), generator=g)
    e2 = torch.randn((samples, rows, m), generator=g)
    h = x @ post.mu_b + ((x * x) @ post.sigma_b**2).sqrt() * e1
    assert post.bias_mu is not None and post.bias_sigma is not None
    mean = h @ post.mu_a.T + post.bias_mu
    std = ((h * h) @ (post.sigma_a**2).T + post.bias_sigma**2).sqrt()
    torch.testing.assert_close(y, mean + std * e2)


@pytest.mark.parametrize("backend", ["lrt"])
def test_batch_invariance(backend: str) -> None:
    """A request's rows get the same samples whether it runs alone or merged with other requests."""
    post = random_posterior(21, 13, 3, seed=2)
    x_a, x_b = _x((2, 13), seed=1), _x((3, 13), seed=2)
    alone = sample_lowrank(x_a, post, 32, NoiseSource.from_seeds([11], [2]), backend)
    merged = sample_lowrank(
        torch.cat([x_b, x_a]), post, 32, NoiseSource.from_seeds([99, 11], [3, 2]), backend
    )
    assert torch.equal(merged[:, 3:], alone)
    assert choose_backend(x_a, post, 32, NoiseSource.from_seeds([1, 2], [1, 1])) is Backend.LRT


@pytest.mark.parametrize("backend", ["factored", "lrt-a", "materialize"])
def test_shared_noise_schemes_refuse_merged_requests(backend: str) -> None:
    post = random_posterior(5, 4, 2, seed=0)
    with pytest.raises(NoiseError):
        sample_lowrank(_x((2, 4), seed=0), post, 8, NoiseSource.from_seeds([1, 2], [1, 1]), backend)


def test_packed_cache_matches_generic_layout() -> None:
    post = random_posterior(13, 9, 3, seed=4)
    draws = draw_factor_samples(post, 40, NoiseSource.from_seed(0, 1))
    assert packed_a_t(draws, 40) is not None and packed_b_flat(draws, 40) is not None
    assert draws.bias is not None
    plain = FactorSamples(draws.a.contiguous(), draws.b.contiguous(), draws.bias.contiguous())
    assert packed_a_t(plain, 40) is None and packed_b_flat(plain, 40) is None
    for x in (_x((5, 9), seed=0), _x((40, 5, 9), seed=1)):
        for s in (40, 17):
            xs = x if x.dim() == 2 else x[:s]
            torch.testing.assert_close(cpu.apply_factors(xs, draws, s), cpu.apply_factors(xs, plain, s))
    detached = FactorSamples(draws.a.detach(), draws.b.detach(), draws.bias.detach())  # what the layer stores
    assert packed_a_t(detached, 40) is not None
    b_flat = packed_b_flat(draws, 17)
    assert b_flat is not None and b_flat.shape == (9, 17 * 3)
    torch.testing.assert_close(b_flat.view(9, 17, 3).transpose(0, 1), draws.b[:17])


def test_cached_without_bias_and_too_few_samples() -> None:
    post = random_posterior(6, 5, 2, seed=0, bias=False)
    draws = draw_factor_samples(post, 8, NoiseSource.from_seed(0, 1))
    assert draws.bias is None and packed_a_t(draws, 8) is not None
    x = _x((3, 5), seed=0)
    want = torch.bmm(torch.matmul(x, draws.b), draws.a.transpose(1, 2))
    torch.testing.assert_close(sample_lowrank(x, post, 8, NoiseSource.from_seed(0, 3), "cached", draws), want)
    with pytest.raises(ValueError, match="cached"):
        sample_lowrank(x, post, 9, NoiseSource.from_seed(0, 3), "cached", draws)


def test_auto_rule_and_work_model() -> None:
    post = random_posterior(1024, 1024, 16, seed=0, bias=True)
    x1 = torch.zeros(1, 1024)
    assert choose_backend(x1, post, 512, NoiseSource.from_seed(0, 1)) is Backend.LRT
    x256 = torch.zeros(256, 1024)
    assert choose_backend(x256, post, 512, NoiseSource.from_seed(0, 256)) is not Backend.LRT
    assert Backend.TRITON not in available_backends()  # no CUDA here and TRITON_INTERPRET not set
    normals = {
        b: work(b, 16, 512, 1024, 1024, 16, True)[0] for b in (Backend.LRT, Backend.LRT_A, Backend.FACTORED)
    }
    assert normals[Backend.LRT] == 512 * 16 * (16 + 1024)
    assert normals[Backend.LRT_A] == 512 * 16 * 16 + 512 * (1024 * 16 + 1024)
    assert normals[Backend.FACTORED] == 512 * (16 * 2048 + 1024)
    assert work(Backend.TRITON, 16, 512, 1024, 1024, 16, True) == work(
        Backend.LRT, 16, 512, 1024, 1024, 16, True
    )
