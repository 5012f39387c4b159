"""The frozen serving pass (``RowwisePlan``) gives the very bits of ``predict`` with per-request noise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import pytest
import torch

from model_core.layers import BayesianModule
from model_core.models import Likelihood, Method
from model_core.plan import RowwisePlan
from model_core.predict import Prediction, predict
from model_core.sampling import NoiseSource
from model_core.sampling.types import Backend

WideMlp = Callable[..., BayesianModule]  # the wide_mlp fixture (tests/conftest.py)


def _assert_same_bits(got: Prediction, want: Prediction) -> None:
    for f in fields(Prediction):
        a, b = getattr(got, f.name), getattr(want, f.name)
        assert (a is None) == (b is None), f.name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), f.name


def _noise(seeds: list[int], sizes: list[int]) -> NoiseSource:
    return NoiseSource.from_seeds(seeds, sizes)


@pytest.mark.parametrize(
    ("method", "likelihood", "out", "rank"),
    [
        (Method.LOWRANK, Likelihood.BERNOULLI, 1, 15),
        (Method.LOWRANK, Likelihood.BERNOULLI, 1, 16),  # r + 1 = 17 columns, padded to 32
        (Method.LOWRANK, Likelihood.GAUSSIAN, 2, 7),
        (Method.LOWRANK, Likelihood.CATEGORICAL, 3, 15),
        (Method.BBB, Likelihood.BERNOULLI, 1, 15),
    ],
)
@pytest.mark.parametrize("samples", [1, 5, 128])
def test_plan_gives_the_bits_of_predict(
    method: Method, likelihood: Likelihood, out: int, rank: int, samples: int, wide_mlp: WideMlp
) -> None:
    model = wide_mlp(method, likelihood, out, rank, in_features=31, hidden=(128, 64))
    plan = RowwisePlan.build(model)
    x = torch.randn(9, 31) * 2
    seeds, sizes = [3, 4, 5], [1, 5, 3]
    want = predict(model, x, samples, noise=_noise(seeds, sizes), backend=Backend.LRT)
    _assert_same_bits(predict(plan, x, samples, noise=_noise(seeds, sizes)), want)
    # one request alone gets the same bits it gets in the merged batch
    _assert_same_bits(predict(plan, x[1:6].clone(), samples, noise=_noise([4], [5])), _rows(want, 1, 6))


def _rows(pred: Prediction, lo: int, hi: int) -> Prediction:
    parts = {f.name: getattr(pred, f.name) for f in fields(Prediction)}
    return Prediction(**{k: None if v is None else v[lo:hi] for k, v in parts.items()})


def test_chunks_and_empty_batches(wide_mlp: WideMlp) -> None:
    model = wide_mlp(Method.LOWRANK, in_features=31)
    plan = RowwisePlan.build(model)
    x = torch.randn(7, 31)
    whole = predict(plan, x, 16, noise=_noise([1, 2], [3, 4]))
    # a budget of 4 rows splits the batch between the noise blocks: the same bits
    _assert_same_bits(predict(plan, x, 16, noise=_noise([1, 2], [3, 4]), chunk_elements=16 * 128 * 4), whole)
    # a budget of 2 rows splits the blocks themselves, as predict does
    want = predict(
        model, x, 16, noise=_noise([1, 2], [3, 4]), backend=Backend.LRT, chunk_elements=16 * 128 * 2
    )
    _assert_same_bits(predict(plan, x, 16, noise=_noise([1, 2], [3, 4]), chunk_elements=16 * 128 * 2), want)
    empty = predict(plan, x[:0], 16, noise=_noise([1], [0]))
    assert len(empty) == 0 and empty.mean.shape == (0,)


def test_the_plan_is_a_snapshot_of_the_parameters(wide_mlp: WideMlp) -> None:
    model = wide_mlp(Method.LOWRANK, in_features=31)
    plan = RowwisePlan.build(model)
    x = torch.randn(2, 31)
    before = predict(plan, x, 32, noise=_noise([9], [2]))
    for layer, name in ((0, "mu_a"), (2, "weight_mu"), (2, "bias_mu")):  # low-rank and mean-field layers
        with torch.no_grad():
            getattr(model.layers[layer], name).mul_(3.0)  # type: ignore[index]
        _assert_same_bits(predict(plan, x, 32, noise=_noise([9], [2])), before)
    rebuilt = RowwisePlan.build(model)
    changed = predict(rebuilt, x, 32, noise=_noise([9], [2]))
    assert not torch.equal(changed.mean, before.mean)
    _assert_same_bits(changed, predict(model, x, 32, noise=_noise([9], [2]), backend=Backend.LRT))


@pytest.mark.parametrize("method", [Method.DETERMINISTIC, Method.RANK1, Method.MCDROPOUT])
def test_models_without_a_row_wise_pass_are_refused(method: Method, wide_mlp: WideMlp) -> None:
    model = wide_mlp(method)
    assert not RowwisePlan.supports(model)
    with pytest.raises(ValueError, match="no batch-invariant row-wise pass"):
        RowwisePlan.build(model)


def test_plan_needs_per_request_noise_for_every_row(wide_mlp: WideMlp) -> None:
    plan = RowwisePlan.build(wide_mlp(Method.LOWRANK, in_features=31))
    x = torch.randn(3, 31)
    with pytest.raises(ValueError, match="per-request noise"):
        predict(plan, x, 8, noise=NoiseSource.from_seed(1, 3))
    with pytest.raises(ValueError, match="covers 2 rows but x has 3"):
        predict(plan, x, 8, noise=_noise([1], [2]))
    with pytest.raises(ValueError, match="samples must be >= 1"):
        predict(plan, x, 0, noise=_noise([1], [3]))


def test_a_plan_runs_only_the_row_wise_lrt_pass(wide_mlp: WideMlp) -> None:
    plan = RowwisePlan.build(wide_mlp(Method.LOWRANK, in_features=31))
    x = torch.randn(3, 31)
    with pytest.raises(ValueError, match="row-wise lrt pass; got backend 'factored'"):
        predict(plan, x, 8, noise=_noise([1], [3]), backend=Backend.FACTORED)
    assert predict(plan, x, 8, noise=_noise([1], [3]), backend=Backend.LRT).mean.shape == (3,)
