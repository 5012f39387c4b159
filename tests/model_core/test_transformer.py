"""Bayesian Transformer encoder: shapes per method and mode, one weight sample per sequence, the
row-gathering embedding, training on a tiny text task, parameter counts."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from model_core.layers.base import Mode, PredictiveContext
from model_core.layers.deterministic import DeterministicLinear
from model_core.layers.embedding import DeterministicEmbedding, LowRankBayesEmbedding, MeanFieldEmbedding
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.layers.meanfield import MeanFieldLinear
from model_core.layers.rank1 import Rank1BayesLinear
from model_core.models.registry import build_model
from model_core.models.spec import ArchitectureSpec, Method
from model_core.models.transformer import (
    DEFAULT_ETA,
    BayesTransformer,
    Pooling,
    lrsvd_init,
    transformer_spec,
)
from model_core.predict import predict
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend
from model_core.training.trainer import TrainConfig, fit, kl_weight, predictive_nll

TINY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32}
VOCAB, MAX_LEN = 50, 12


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster than two and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ids(n: int = 6, seed: int = 0, max_len: int = MAX_LEN) -> torch.Tensor:
    """[CLS] + random words, right-padded, varying lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, max_len), generator=gen)
    ids[:, 0] = 2
    lengths = torch.randint(2, max_len, (n,), generator=gen)
    ids[torch.arange(max_len).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return ids


def _model(method: Method, members: int = 1, rank: int = 4, seed: int = 0) -> BayesTransformer:
    torch.manual_seed(seed)
    spec = transformer_spec(method, VOCAB, MAX_LEN, rank=rank, members=members, **TINY)
    return build_model(spec)  # type: ignore[return-value]


def _ctx(samples: int, rows: int, seed: int = 0, backend: Backend = Backend.AUTO) -> PredictiveContext:
    return PredictiveContext(samples, NoiseSource.from_seed(seed, rows), backend)


@pytest.mark.parametrize("method", list(Method))
def test_shapes_in_every_mode(method: Method) -> None:
    ensemble = method in (Method.ENSEMBLE, Method.LOWRANK_ENS)
    model = _model(method, members=3 if ensemble else 1)
    x = _ids(5)
    lead = (3,) if ensemble else ()
    assert model(x).shape == (*lead, 5, 1)
    model.set_mode(Mode.MEAN)
    assert model(x).shape == (*lead, 5, 1)
    model.set_mode(Mode.SAMPLE)
    with torch.no_grad():
        out = model.predictive(x, _ctx(4, 5))
    expected_s = 3 if method is Method.ENSEMBLE else (6 if method is Method.LOWRANK_ENS else 4)
    assert out.shape == (expected_s, 5, 1) and torch.isfinite(out).all()
    pred = predict(model, x, samples=4, seed=0)
    assert pred.mean.shape == (5,)
    kl = model.kl()
    assert kl.shape == () and (float(kl.detach()) > 0) == (
        method not in (Method.DETERMINISTIC, Method.ENSEMBLE, Method.MCDROPOUT)
    )
    with torch.no_grad():
        assert model.predictive(x[:0], _ctx(4, 0)).shape[1] == 0


def test_spec_round_trips_and_layers_match_method() -> None:
    spec = transformer_spec(Method.LOWRANK, VOCAB, MAX_LEN, rank=4, **TINY)
    again = ArchitectureSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec and again.extra["embed_rank"] == 4
    model = build_model(again)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"LowRankBayesEmbedding", "LowRankBayesLinear", "MeanFieldLinear"} <= kinds
    assert isinstance(model.head, MeanFieldLinear)  # type: ignore[union-attr]
    bbb = _model(Method.BBB)
    assert isinstance(bbb.embed, MeanFieldEmbedding)
    assert isinstance(_model(Method.MCDROPOUT).embed, DeterministicEmbedding)


@pytest.mark.parametrize("method", [Method.LOWRANK, Method.BBB, Method.RANK1, Method.LOWRANK_ENS])
def test_kl_covers_every_bayesian_layer(method: Method) -> None:
    members = 2 if method is Method.LOWRANK_ENS else 1
    spec = transformer_spec(method, VOCAB, MAX_LEN, rank=4, members=members, **TINY)
    model = build_model(spec.model_copy(update={"prior": {"kind": "gaussian", "sigma": 1.0}}))  # exact KL
    kinds = (LowRankBayesLinear, MeanFieldLinear, Rank1BayesLinear, LowRankBayesEmbedding, MeanFieldEmbedding)
    leaves = [m for m in model.modules() if isinstance(m, kinds)]
    expected = sum(float(m.kl().detach()) for m in leaves)
    assert len(leaves) >= 9 and float(model.kl().detach()) == pytest.approx(expected, rel=1e-5)


def test_padding_does_not_change_the_output() -> None:
    model = _model(Method.LOWRANK).set_mode(Mode.MEAN)
    x = _ids(4)
    short = x[:1, :3].clone()
    short[0, 2] = 0
    alone = model(short)
    padded = torch.cat([x[:1, :3], torch.zeros(1, MAX_LEN - 3, dtype=torch.long)], 1)
    padded[0, 2] = 0
    batch = torch.cat([padded, x[1:]])
    torch.testing.assert_close(model(batch)[:1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", [Method.LOWRANK, Method.BBB])
def test_one_weight_sample_is_shared_by_all_rows(method: Method) -> None:
    """Identical sequences get identical outputs per sample (per-row noise would make them differ),
    while the samples themselves differ."""
    model = _model(method)
    seq = _ids(1)
    x = torch.cat([seq, _ids(2, seed=5), seq])
    with torch.no_grad():
        out = model.predictive(x, _ctx(8, 4))
    torch.testing.assert_close(out[:, 0], out[:, 3])
    assert out[:, 0].std() > 1e-4


def test_predictive_sample_equals_the_network_with_that_weight_sample() -> None:
    """With cached factor draws, sample s of the predictive output is exactly the deterministic network
    whose every low-rank weight (attention, FFN, embedding) is A_s B_sᵀ — for every token of every
    sequence. The mean-field head is made (numerically) deterministic so that only cached draws vary."""
    model = _model(Method.LOWRANK)
    head = model.head
    assert isinstance(head, MeanFieldLinear) and head.bias_rho is not None
    with torch.no_grad():
        head.weight_rho.fill_(-40.0)
        head.bias_rho.fill_(-40.0)
    samples = 3
    model.build_cache(samples, NoiseSource.from_seed(7, 1))
    x = _ids(5)
    with torch.no_grad():
        out = model.predictive(x, _ctx(samples, 5, backend=Backend.CACHED))
    for s in range(samples):
        twin = copy.deepcopy(model)
        for (name, mod), (_, src) in zip(twin.named_modules(), model.named_modules(), strict=True):
            if isinstance(mod, LowRankBayesLinear):
                draws = src._cache
                assert draws is not None
                with torch.no_grad():
                    mod.mu_a.copy_(draws.a[s])
                    mod.mu_b.copy_(draws.b[s])
                    assert draws.bias is not None and mod.bias_mu is not None
                    mod.bias_mu.copy_(draws.bias[s, 0])
            elif isinstance(mod, LowRankBayesEmbedding):
                assert src._cache is not None, name
                a, b = src._cache
                with torch.no_grad():
                    mod.mu_a.copy_(a[s])
                    mod.mu_b.copy_(b[s])
        twin.set_mode(Mode.MEAN)
        with torch.no_grad():
            torch.testing.assert_close(out[s], twin(x), rtol=1e-4, atol=1e-4)


def test_merged_requests_get_their_own_answer() -> None:
    """A multi-block noise source (merged requests) is split by block: same answer alone or merged."""
    model = _model(Method.LOWRANK)
    x = _ids(7)
    with torch.no_grad():
        merged = model.predictive(x, PredictiveContext(4, NoiseSource.from_seeds([1, 2], [3, 4])))
        alone = model.predictive(x[3:], PredictiveContext(4, NoiseSource.from_seeds([2], [4])))
    torch.testing.assert_close(merged[:, 3:], alone)


def test_predictive_chunks_do_not_change_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    import model_core.models.transformer as tr

    monkeypatch.setattr(tr, "PREDICTIVE_CHUNK_ELEMENTS", 1)  # one row per chunk
    model = _model(Method.RANK1)
    with torch.no_grad():
        out = model.predictive(_ids(5), _ctx(3, 5))
    assert out.shape == (3, 5, 1)


def test_lowrank_embedding_touches_only_batch_rows() -> None:
    emb = LowRankBayesEmbedding(100, 8, rank=3)
    ids = torch.tensor([[2, 5, 5, 0], [2, 9, 0, 0]])
    emb(ids).sum().backward()
    assert emb.last_rows is not None and emb.last_rows.tolist() == [0, 2, 5, 9]
    assert emb.mu_a.grad is not None
    touched = emb.mu_a.grad.abs().sum(1) > 0
    assert touched.nonzero().flatten().tolist() == [0, 2, 5, 9]
    assert float(emb.rho_a.grad[~touched].abs().sum()) == 0.0  # type: ignore[index]
    with torch.no_grad():
        out = emb.predictive(ids, _ctx(4, 2))
    assert out.shape == (4, 2, 4, 8)
    torch.testing.assert_close(out[:, 0, 1], out[:, 0, 2])  # same token, same sample: same row
    assert LowRankBayesEmbedding.count(100, 8, 3) == emb.parameter_count()


def test_mean_field_embedding_samples_only_batch_rows() -> None:
    emb = MeanFieldEmbedding(100, 8)
    ids = torch.tensor([[3, 4, 4]])
    emb(ids).sum().backward()
    assert emb.weight_rho.grad is not None
    assert (emb.weight_rho.grad.abs().sum(1) > 0).nonzero().flatten().tolist() == [3, 4]


def test_lrsvd_init_copies_a_truncated_dense_model() -> None:
    dense = _model(Method.DETERMINISTIC)
    full = _model(Method.LRSVD, rank=16)  # embedding rank 16 = d: exact; linears stay mean-field
    lrsvd_init(full, dense)
    emb = full.embed
    assert isinstance(emb, LowRankBayesEmbedding) and isinstance(dense.embed, DeterministicEmbedding)
    torch.testing.assert_close(emb.mean_weight(), dense.embed.weight.detach(), rtol=1e-4, atol=1e-4)
    low = _model(Method.LRSVD, rank=4)
    lrsvd_init(low, dense)
    qkv, src = low.blocks[0].attn.qkv, dense.blocks[0].attn.qkv  # type: ignore[union-attr]
    assert isinstance(qkv, LowRankBayesLinear) and isinstance(src, DeterministicLinear)
    u, sv, vh = torch.linalg.svd(src.linear.weight.detach(), full_matrices=False)
    truncated = u[:, :4] @ torch.diag(sv[:4]) @ vh[:4]
    torch.testing.assert_close(qkv.mean_weight().detach(), truncated, rtol=1e-4, atol=1e-4)


def _synthetic_text(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label 1 iff the sequence holds more 'positive' ids (3..12) than 'negative' ones (13..22)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(23, VOCAB, (n, MAX_LEN), generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    for i in range(n):
        lo = 3 if y[i] == 1 else 13
        pos = torch.randperm(MAX_LEN - 1, generator=gen)[:3] + 1
        ids[i, pos] = torch.randint(lo, lo + 10, (3,), generator=gen)
    ids[:, 0] = 2
    ids[n // 2 :, MAX_LEN - 3 :] = 0
    return ids, y.float()


@pytest.mark.parametrize("method", [Method.LOWRANK, Method.DETERMINISTIC])
def test_training_lowers_validation_nll(method: Method) -> None:
    x_train, y_train = _synthetic_text(256, 0)
    x_val, y_val = _synthetic_text(96, 1)
    model = _model(method, rank=4)
    before = predictive_nll(predict(model, x_val, samples=8, seed=0), y_val, model.spec.likelihood)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3, patience=6, progress=False, val_samples=4)
    result = fit(model, x_train, y_train, x_val, y_val, cfg)
    after = predictive_nll(predict(model, x_val, samples=8, seed=0), y_val, model.spec.likelihood)
    assert result.best_val_nll < before and after < before - 0.05


def test_parameter_counts_meet_the_30x_target() -> None:
    """The default sentiment size (vocab ~9.2k, max_len 48, d = 256): low-rank r = 16 has >= 30x fewer
    parameters than the 5-member deterministic ensemble."""
    vocab = 9_241
    low = build_model(transformer_spec(Method.LOWRANK, vocab, 48, rank=16))
    assert isinstance(low, BayesTransformer)
    ens = build_model(transformer_spec(Method.ENSEMBLE, vocab, 48, members=5))
    det = build_model(transformer_spec(Method.DETERMINISTIC, vocab, 48))
    assert ens.parameter_count() == 5 * det.parameter_count()
    assert ens.parameter_count() >= 30 * low.parameter_count()
    emb = low.embed
    assert isinstance(emb, LowRankBayesEmbedding)
    assert emb.parameter_count() == LowRankBayesEmbedding.count(vocab, 256, 16)


def test_mean_pooling_is_recorded_and_reads_every_token() -> None:
    """[CLS] pooling (the default, not written to the spec) ignores a change to a later token after the
    blocks; mean pooling is recorded in the spec and is still invariant to padding."""
    cls_spec = transformer_spec(Method.DETERMINISTIC, VOCAB, MAX_LEN, **TINY)
    assert "pooling" not in cls_spec.extra  # specs written before the option are unchanged
    spec = transformer_spec(Method.LOWRANK, VOCAB, MAX_LEN, rank=4, pooling=Pooling.MEAN, **TINY)
    assert spec.extra["pooling"] == "mean"
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec.model_validate(spec.model_dump(mode="json"))).set_mode(Mode.MEAN)
    assert isinstance(model, BayesTransformer)
    h = torch.randn(2, 5, TINY["d_model"])
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    pooled = model.pool(h, mask)
    torch.testing.assert_close(pooled[0], h[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], h[1].mean(0))
    x = _ids(3)
    lengths = (x != 0).sum(1)
    shortest = int(lengths.argmin())
    assert int(lengths[shortest]) < int(lengths.max())  # batched, it carries padding the others need
    alone = model(x[shortest : shortest + 1])
    torch.testing.assert_close(model(x)[shortest : shortest + 1], alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert model.predictive(x, _ctx(4, 3)).shape == (4, 3, 1)
    with pytest.raises(ValueError):
        transformer_spec(Method.LOWRANK, VOCAB, MAX_LEN, pooling="max", **TINY)


def test_eta_sets_the_initial_posterior_scale() -> None:
    """A smaller η gives smaller initial factor σ in every low-rank layer and the embedding."""

    def sigmas(eta: float) -> list[float]:
        torch.manual_seed(0)
        spec = transformer_spec(Method.LOWRANK, VOCAB, MAX_LEN, rank=4, eta=eta, **TINY)
        assert spec.extra["eta"] == eta
        model = build_model(spec)
        layers = [m for m in model.modules() if isinstance(m, (LowRankBayesLinear, LowRankBayesEmbedding))]
        return [float(torch.nn.functional.softplus(m.rho_a.detach()).mean()) for m in layers]

    small, large = sigmas(0.02), sigmas(0.1)
    assert len(small) >= 5 and all(s < 0.5 * big for s, big in zip(small, large, strict=True))
    assert transformer_spec(Method.LOWRANK, VOCAB, MAX_LEN, rank=4, **TINY).extra["eta"] == DEFAULT_ETA


def test_kl_warmup_grows_the_weight_and_delays_early_stopping() -> None:
    cfg = TrainConfig(kl_beta=1.0, kl_warmup=4)
    assert [kl_weight(e, cfg) for e in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert kl_weight(1, TrainConfig()) == 1.0
    x_train, y_train = _synthetic_text(64, 0)
    x_val, y_val = _synthetic_text(32, 1)
    model = _model(Method.DETERMINISTIC)
    # a deterministic model at lr 0: no epoch improves on the first, so patience 1 alone stops at epoch 2
    cfg = TrainConfig(epochs=8, batch_size=32, lr=0.0, patience=1, kl_warmup=5, progress=False, val_samples=2)
    result = fit(model, x_train, y_train, x_val, y_val, cfg)
    assert result.epochs_run == 6
    assert [row["kl_weight"] for row in result.history] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert all(0.0 <= row["val_accuracy"] <= 1.0 for row in result.history)
