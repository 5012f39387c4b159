"""The Bayesian LSTM: shapes in every mode, weights reused across time steps, KL, parameter counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from model_core.layers.base import Mode, PredictiveContext
from model_core.layers.deterministic import DeterministicLinear
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.layers.meanfield import MeanFieldLinear
from model_core.layers.recurrent import BayesLSTMLayer, draw_sample_op, lstm_scan
from model_core.models.lstm import BayesLSTM, LSTMEnsemble, lstm_layer_ranks, lstm_parameter_count
from model_core.models.registry import build_model
from model_core.models.spec import ArchitectureSpec, Likelihood, Method
from model_core.predict import predict
from model_core.sampling.cpu import draw_factor_samples
from model_core.sampling.noise import NoiseSource
from model_core.training.trainer import TrainConfig, fit, predictive_nll


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids thread-pool waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RANKED = (Method.LOWRANK, Method.LRSVD, Method.LOWRANK_ENS)


def lstm_spec(
    method: Method, hidden: list[int] | None = None, rank: int = 4, n_in: int = 5
) -> ArchitectureSpec:
    return ArchitectureSpec(
        kind="lstm",
        method=method,
        in_features=n_in,
        hidden=hidden or [16, 16],
        out_features=2,
        likelihood=Likelihood.GAUSSIAN,
        rank=rank if method in RANKED else None,
        members=3 if method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else 1,
    )


@pytest.mark.parametrize("method", list(Method))
def test_shapes_in_every_mode(method: Method) -> None:
    torch.manual_seed(0)
    model = build_model(lstm_spec(method))
    assert isinstance(model, LSTMEnsemble if method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else BayesLSTM)
    x = torch.randn(7, 6, 5)
    lead = (3,) if isinstance(model, LSTMEnsemble) else ()
    assert model(x).shape == (*lead, 7, 2)
    model.set_mode(Mode.MEAN)
    assert model(x).shape == (*lead, 7, 2)
    model.set_mode(Mode.SAMPLE)
    out = model.predictive(x, PredictiveContext(9, NoiseSource.from_seed(1, 7)))
    expected_s = 3 if method is Method.ENSEMBLE else 9  # a deep ensemble gives one output per member
    assert out.shape == (expected_s, 7, 2) and torch.isfinite(out).all()
    pred = predict(model, x, samples=9, seed=3)
    assert pred.mean.shape == (7,) and (pred.variance > 0).all()
    kl = model.kl()
    assert kl.shape == () and torch.isfinite(kl)
    if method in (Method.DETERMINISTIC, Method.ENSEMBLE, Method.MCDROPOUT):
        assert float(kl) == 0.0
    else:
        assert float(kl.detach()) > 0.0


def _manual_lowrank_reference(model: BayesLSTM, x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """Draw every gate matrix's factors ONCE, then run the cell by hand, sample by sample, step by step."""
    noise = NoiseSource.from_seed(seed, x.shape[0])
    weights = []
    for layer in model.layers:
        assert isinstance(layer, BayesLSTMLayer)
        pair = []
        for lin in (layer.ih, layer.hh):
            assert isinstance(lin, LowRankBayesLinear)
            d = draw_factor_samples(lin.posterior(), samples, noise)
            pair.append((d.a @ d.b.transpose(1, 2), None if d.bias is None else d.bias[:, 0]))
        weights.append(pair)
    lasts = []
    for s in range(samples):
        inp_seq = x
        for (w_ih, b_ih), (w_hh, _) in weights:
            h = x.new_zeros((x.shape[0], w_hh.shape[2]))
            c = torch.zeros_like(h)
            outs = []
            for t in range(x.shape[1]):  # the same W_s at every step
                g = inp_seq[:, t] @ w_ih[s].T + b_ih[s] + h @ w_hh[s].T  # type: ignore[index]
                i, f, cell, o = g.chunk(4, -1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cell)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            inp_seq = torch.stack(outs, 1)
        lasts.append(inp_seq[:, -1])
    last = torch.stack(lasts)  # (S, N, H)
    return model.head.predictive(last, PredictiveContext(samples, noise))  # type: ignore[operator]


def test_predictive_draws_weights_once_and_reuses_them_at_every_step() -> None:
    torch.manual_seed(0)
    spec = lstm_spec(Method.LOWRANK, hidden=[12, 12], rank=3, n_in=6)
    model = build_model(spec)
    assert isinstance(model, BayesLSTM)
    assert lstm_layer_ranks(spec)[:4] == [3, 3, 3, 3]
    x = torch.randn(5, 8, 6)
    with torch.no_grad():
        got = model.predictive(x, PredictiveContext(4, NoiseSource.from_seed(11, 5)))
        ref = _manual_lowrank_reference(model, x, 4, 11)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # the samples differ from each other (the draws are real), and the seed fixes them
    assert not torch.allclose(got[0], got[1])
    again = model.predictive(x, PredictiveContext(4, NoiseSource.from_seed(11, 5)))
    torch.testing.assert_close(got, again)


@pytest.mark.parametrize("method", [Method.DETERMINISTIC, Method.LOWRANK, Method.BBB, Method.RANK1])
@pytest.mark.parametrize("mode", [Mode.SAMPLE, Mode.MEAN])
def test_training_forward_draws_once_per_sequence_batch(method: Method, mode: Mode) -> None:
    """Also the fused ATen path (every method but rank-1) against a hand-written loop on the same draw."""
    torch.manual_seed(0)
    model = build_model(lstm_spec(method))
    assert isinstance(model, BayesLSTM)
    model.set_mode(mode)
    layer = model.layers[0]
    assert isinstance(layer, BayesLSTMLayer)
    x = torch.randn(4, 10, 5)
    torch.manual_seed(5)
    got = layer(x)
    torch.manual_seed(5)
    ih, hh = draw_sample_op(layer.ih), draw_sample_op(layer.hh)
    gx = ih(x, True)
    h = x.new_zeros((4, 16))
    c = torch.zeros_like(h)
    for t in range(10):  # one op (one weight draw) for all steps
        i, f, cell, o = (gx[:, t] + hh(h, False)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cell)
        h = torch.sigmoid(o) * torch.tanh(c)
        torch.testing.assert_close(got[:, t], h)
    got.sum().backward()  # gradients reach the posterior parameters through the drawn weights
    grads = [p.grad for p in layer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if mode is Mode.SAMPLE:  # every parameter (means and scales) is on the sampled path
        assert len(grads) == len(list(layer.parameters()))
    # a drawn op is a fixed function: the same input gives the same output
    torch.testing.assert_close(hh(h, False), hh(h, False))
    assert lstm_scan(gx, hh, 16).shape == (4, 10, 16)


def test_merged_requests_do_not_change_each_others_answers() -> None:
    torch.manual_seed(0)
    model = build_model(lstm_spec(Method.LOWRANK))
    x = torch.randn(7, 5, 5)
    both = model.predictive(x, PredictiveContext(6, NoiseSource.from_seeds([1, 2], [3, 4])))
    alone = model.predictive(x[3:], PredictiveContext(6, NoiseSource.from_seeds([2], [4])))
    torch.testing.assert_close(both[:, 3:], alone)


def test_cached_backend_reuses_the_built_factor_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model(lstm_spec(Method.LOWRANK))
    assert isinstance(model, BayesLSTM)
    model.build_cache(8, NoiseSource.from_seed(0, 1))
    x = torch.randn(4, 5, 5)
    fresh = predict(model, x, samples=8, seed=1)

    def no_draws(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached backend must not draw factors")

    monkeypatch.setattr("model_core.layers.recurrent.draw_factor_samples", no_draws)
    cached = predict(model, x, samples=8, seed=1, backend="cached")
    assert torch.isfinite(cached.mean).all() and not torch.allclose(cached.mean, fresh.mean)
    with pytest.raises(AssertionError, match="must not draw"):
        predict(model, x, samples=8, seed=1)
    with pytest.raises(ValueError, match="only 8 are cached"):
        predict(model, x, samples=9, seed=1, backend="cached")


def test_parameter_counts() -> None:
    air = dict(in_features=15, hidden=[64, 64], out_features=2, likelihood=Likelihood.GAUSSIAN, kind="lstm")
    det = ArchitectureSpec(method=Method.DETERMINISTIC, **air)  # type: ignore[arg-type]
    # one bias per layer: 4H(n + H + 1) per layer + the head
    assert lstm_parameter_count(det) == 256 * (15 + 64 + 1) + 256 * (64 + 64 + 1) + 64 * 2 + 2 == 53634
    lowrank = ArchitectureSpec(method=Method.LOWRANK, rank=8, **air)  # type: ignore[arg-type]
    expected = (2 * 8 * (15 + 256) + 512) + 2 * 8 * (64 + 256) + (2 * 8 * 320 + 512) + 2 * 8 * 320 + 2 * 130
    assert lstm_parameter_count(lowrank) == expected == 20980
    for method in Method:
        spec = ArchitectureSpec(
            method=method,
            rank=8 if method in RANKED else None,
            members=5 if method in (Method.ENSEMBLE, Method.LOWRANK_ENS) else 1,
            **air,  # type: ignore[arg-type]
        )
        assert build_model(spec).parameter_count() == lstm_parameter_count(spec), method


def test_kl_is_the_sum_over_every_gate_matrix() -> None:
    model = build_model(lstm_spec(Method.LOWRANK))
    assert isinstance(model, BayesLSTM)
    torch.manual_seed(3)  # the scale-mixture prior's KL is a Monte Carlo estimate
    total = sum(float(lin.kl().detach()) for lin in model.linears())
    torch.manual_seed(3)
    assert float(model.kl().detach()) == pytest.approx(total, rel=1e-5)


def _sequence_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 3, generator=g)
    y = x[:, -3:, 0].sum(1) - 0.5 * x[:, 0, 1] + 0.1 * torch.randn(n, generator=g)
    return x, y


@pytest.mark.parametrize("method", [Method.LOWRANK, Method.MCDROPOUT])
def test_training_lowers_validation_nll(method: Method) -> None:
    torch.manual_seed(0)
    spec = ArchitectureSpec(
        kind="lstm",
        method=method,
        in_features=3,
        hidden=[16],
        out_features=2,
        likelihood=Likelihood.GAUSSIAN,
        rank=4 if method is Method.LOWRANK else None,
    )
    model = build_model(spec)
    x, y = _sequence_task(384, 0)
    xv, yv = _sequence_task(128, 1)
    before = predictive_nll(predict(model, xv, samples=8, seed=0), yv, Likelihood.GAUSSIAN)
    cfg = TrainConfig(epochs=15, batch_size=32, lr=1e-2, patience=15, progress=False, val_samples=8)
    result = fit(model, x, y, xv, yv, cfg)
    assert result.best_val_nll < before - 0.3


def test_input_normalisation_from_the_spec() -> None:
    torch.manual_seed(0)
    plain = lstm_spec(Method.LOWRANK)
    loc, scale = [0.5] * 5, [0.25] * 5
    normed = plain.model_copy(update={"extra": {"input_loc": loc, "input_scale": scale}})
    a, b = build_model(plain), build_model(normed)
    b.load_state_dict(a.state_dict())  # the constants are not tensors of the checkpoint
    assert set(a.state_dict()) == set(b.state_dict())
    x = torch.rand(3, 4, 5)
    a.set_mode(Mode.MEAN)
    b.set_mode(Mode.MEAN)
    torch.testing.assert_close(b(x), a((x - 0.5) / 0.25))
    ctx = PredictiveContext(4, NoiseSource.from_seed(0, 3))
    ctx2 = PredictiveContext(4, NoiseSource.from_seed(0, 3))
    torch.testing.assert_close(b.predictive(x, ctx), a.predictive((x - 0.5) / 0.25, ctx2))
    with pytest.raises(ValueError, match="input_loc"):
        build_model(plain.model_copy(update={"extra": {"input_scale": [0.0] * 5}}))


def test_lrsvd_starts_from_the_truncated_svd_of_a_deterministic_lstm() -> None:
    from model_core.training.pipeline import _svd_init

    torch.manual_seed(0)
    dense = build_model(lstm_spec(Method.DETERMINISTIC, hidden=[8, 8], n_in=5))
    model = build_model(lstm_spec(Method.LRSVD, hidden=[8, 8], rank=2, n_in=5))
    assert isinstance(dense, BayesLSTM) and isinstance(model, BayesLSTM)
    _svd_init(model, dense)
    for target, source in zip(model.linears(), dense.linears(), strict=True):
        assert isinstance(source, DeterministicLinear)
        weight = source.linear.weight.detach()
        if isinstance(target, LowRankBayesLinear):
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            torch.testing.assert_close(
                target.mean_weight(), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5, rtol=1e-4
            )
        else:
            assert isinstance(target, MeanFieldLinear)
            torch.testing.assert_close(target.weight_mu, weight)
