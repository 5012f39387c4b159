import math

import pytest
import torch

from model_core.layers import Mode, PredictiveContext
from model_core.models import ArchitectureSpec, Likelihood, Method, build_model
from model_core.predict import predict, summarize
from model_core.sampling import NoiseSource


def _model(method: Method, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    rank = 3 if method in (Method.LOWRANK, Method.LOWRANK_ENS, Method.LRSVD) else None
    members = 3 if method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else 1
    spec = ArchitectureSpec(
        method=method, in_features=5, hidden=[16, 16], out_features=1, rank=rank, members=members, **kw
    )  # type: ignore[arg-type]
    model = build_model(spec)
    for name, p in model.named_parameters():  # wider posteriors make the test sharper
        if "rho" in name:
            with torch.no_grad():
                p.fill_(-2.0)
    return model


@pytest.mark.parametrize("method", [Method.LOWRANK, Method.BBB, Method.RANK1])
def test_batched_prediction_matches_a_slow_per_sample_reference(method: Method) -> None:
    """Same distribution as drawing one full weight sample per forward pass, S times in a Python loop."""
    model = _model(method)
    x = torch.randn(3, 5)
    s = 3000
    fast = model.predictive(x, PredictiveContext(s, NoiseSource.from_seed(0, 3)))  # type: ignore[operator]
    fast = torch.sigmoid(fast[..., 0]).detach()
    model.set_mode(Mode.SAMPLE)
    torch.manual_seed(1)
    with torch.no_grad():
        slow = torch.stack([torch.sigmoid(model(x)[:, 0]) for _ in range(s)])
    se = torch.sqrt(fast.var(0) / s + slow.var(0) / s)
    assert torch.all((fast.mean(0) - slow.mean(0)).abs() < 5 * se + 1e-4)
    # standard deviations agree within the sampling error of a std (≈ σ/sqrt(2S)), 6 sigma
    tol = 6 * slow.std(0) / math.sqrt(2 * s) + 1e-4
    assert torch.all((fast.std(0) - slow.std(0)).abs() < tol)


@pytest.mark.parametrize("method", list(Method))
def test_same_seed_same_answer_and_uncertainty_identities(method: Method) -> None:
    model = _model(method)
    x = torch.randn(4, 5)
    a = predict(model, x, samples=32, seed=7)
    b = predict(model, x, samples=32, seed=7)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.epistemic, b.epistemic)
    assert torch.allclose(a.entropy, a.epistemic + a.aleatoric, atol=1e-5)
    assert torch.allclose(a.variance, a.mean * (1 - a.mean), atol=1e-6)
    assert torch.all(a.epistemic >= 0) and torch.equal(a.ood_score, a.epistemic)
    if method not in (Method.DETERMINISTIC, Method.ENSEMBLE):  # those have no randomness
        c = predict(model, x, samples=32, seed=8)
        assert not torch.equal(a.mean, c.mean)


@pytest.mark.parametrize("method", [Method.DETERMINISTIC, Method.ENSEMBLE])
def test_identical_samples_have_exactly_zero_mutual_information(method: Method) -> None:
    model = _model(Method.DETERMINISTIC)
    p = predict(model, torch.randn(50, 5), samples=100, seed=0)
    assert torch.all(p.epistemic == 0)
    if method is Method.ENSEMBLE:  # members disagree: MI is positive
        assert torch.all(predict(_model(method), torch.randn(50, 5), samples=10, seed=0).epistemic > 0)


def test_summarize_binary_by_hand() -> None:
    # two samples with p = 0.2 and 0.6: p̄ = 0.4, H(p̄) = −0.4 ln 0.4 − 0.6 ln 0.6
    spec = ArchitectureSpec(method=Method.DETERMINISTIC, in_features=1, out_features=1)
    logits = torch.logit(torch.tensor([0.2, 0.6])).view(2, 1, 1)
    p = summarize(logits, spec)
    h = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q))  # noqa: E731
    assert p.mean.item() == pytest.approx(0.4, abs=1e-6)
    assert p.entropy.item() == pytest.approx(h(0.4), abs=1e-6)
    assert p.aleatoric.item() == pytest.approx((h(0.2) + h(0.6)) / 2, abs=1e-6)
    assert p.epistemic.item() == pytest.approx(h(0.4) - (h(0.2) + h(0.6)) / 2, abs=1e-6)


@pytest.mark.parametrize("samples", [1, 7, 64, 128, 200])
def test_row_wise_bernoulli_summaries_match_the_vectorised_ones(samples: int) -> None:
    """``summarize(..., rowwise=True)`` computes the Bernoulli summaries from the logits (softplus
    identities); the definitions are the vectorised ones, up to float32 rounding, also for saturated
    logits."""
    spec = ArchitectureSpec(method=Method.LOWRANK, in_features=1, out_features=1, rank=1)
    gen = torch.Generator().manual_seed(samples)
    logits = torch.randn(samples, 6, 1, generator=gen) * torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0, 1.0]).view(
        1, 6, 1
    )
    logits[:, 5] += 25.0  # every sample saturated near p = 1
    rows, ref = summarize(logits, spec, rowwise=True), summarize(logits, spec)
    for name in ("mean", "variance", "epistemic", "aleatoric", "entropy", "ood_score"):
        assert torch.allclose(getattr(rows, name), getattr(ref, name), rtol=1e-4, atol=2e-6), name
    assert torch.all(rows.epistemic >= 0) and torch.equal(rows.ood_score, rows.epistemic)
    agree = summarize(logits[:1].expand(samples, 6, 1).contiguous(), spec, rowwise=True)
    assert torch.all(agree.epistemic == 0)  # identical samples: exactly zero mutual information
    h = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q))  # noqa: E731
    two = summarize(torch.logit(torch.tensor([0.2, 0.6])).view(2, 1, 1), spec, rowwise=True)
    assert two.epistemic.item() == pytest.approx(h(0.4) - (h(0.2) + h(0.6)) / 2, abs=1e-6)


@pytest.mark.parametrize("center", [-15.0, -8.0, 0.0, 8.0, 15.0])
@pytest.mark.parametrize("spread", [0.05, 1.0])
def test_row_wise_mutual_information_is_accurate_for_confident_predictions(
    center: float, spread: float
) -> None:
    """Against float64: confident predictions (either sign) have a tiny MI that float32 rounding of
    1 − p̄ or softplus(z) − z·p would swamp; the row-wise summary keeps it to ~1e-3 relative."""
    spec = ArchitectureSpec(method=Method.LOWRANK, in_features=1, out_features=1, rank=1)
    z = center + spread * torch.randn(128, 1, generator=torch.Generator().manual_seed(int(center) + 99))
    z64 = z.double()
    p, q = torch.sigmoid(z64), torch.sigmoid(-z64)
    h = -(p * torch.log(p) + q * torch.log(q))
    p_bar, q_bar = p.mean(), q.mean()
    want = float(-(p_bar * torch.log(p_bar) + q_bar * torch.log(q_bar)) - h.mean())
    got = summarize(z.float().view(128, 1, 1), spec, rowwise=True)
    assert abs(got.epistemic.item() - want) <= max(2e-3 * want, 1e-12), (got.epistemic.item(), want)
    assert got.aleatoric.item() == pytest.approx(float(h.mean()), rel=1e-5)
    assert got.variance.item() == pytest.approx(float(p_bar * q_bar), rel=1e-5)


def test_summarize_regression_by_hand() -> None:
    spec = ArchitectureSpec(
        method=Method.DETERMINISTIC,
        in_features=1,
        out_features=2,
        likelihood=Likelihood.GAUSSIAN,
        target_loc=10,
        target_scale=2,
    )
    raw_scale = torch.log(torch.expm1(torch.tensor(1.0 - 1e-3)))  # softplus(raw) + 1e-3 = 1
    out = torch.tensor([[[0.0, raw_scale]], [[1.0, raw_scale]]])  # μ = 10 and 12, σ = 2 each
    p = summarize(out, spec)
    assert p.mean.item() == pytest.approx(11.0)
    assert p.epistemic.item() == pytest.approx(1.0)  # population variance of {10, 12}
    assert p.aleatoric.item() == pytest.approx(4.0, rel=1e-5)
    assert p.variance.item() == pytest.approx(5.0, rel=1e-5)
    assert not hasattr(
        p, "interval_low"
    )  # intervals are calibration's (model_core.conformal.served_interval)


def test_chunking_keeps_requests_independent_of_their_batch() -> None:
    model = _model(Method.LOWRANK)
    xa, xb = torch.randn(3, 5), torch.randn(5, 5)
    alone = predict(model, xa, samples=64, noise=NoiseSource.from_seeds([11], [3]))
    merged = predict(model, torch.cat([xb, xa]), samples=64, noise=NoiseSource.from_seeds([5, 11], [5, 3]))
    # same noise; only GEMM rounding may differ with the batch's size (BLAS blocks by matrix shape)
    assert torch.allclose(alone.mean, merged.mean[5:], rtol=0, atol=1e-6)
    assert torch.allclose(alone.epistemic, merged.epistemic[5:], rtol=0, atol=1e-6)
    tiny = predict(
        model,
        torch.cat([xb, xa]),
        samples=64,
        noise=NoiseSource.from_seeds([5, 11], [5, 3]),
        chunk_elements=64 * 16 * 4,
    )
    assert torch.allclose(alone.mean, tiny.mean[5:], rtol=0, atol=1e-6)


def test_large_sample_count_stays_bounded() -> None:
    model = _model(Method.LOWRANK)
    p = predict(model, torch.randn(300, 5), samples=512, seed=0, chunk_elements=512 * 16 * 32)
    assert p.mean.shape == (300,) and torch.isfinite(p.mean).all()


def test_invalid_arguments() -> None:
    model = _model(Method.LOWRANK)
    with pytest.raises(ValueError, match="samples"):
        predict(model, torch.randn(2, 5), samples=0)
    with pytest.raises(ValueError, match="rows"):
        predict(model, torch.randn(2, 5), noise=NoiseSource.from_seed(0, 3))
