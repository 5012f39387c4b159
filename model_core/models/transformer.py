"""A pre-norm Transformer encoder classifier (CLS or mean pooling) for the text tasks, for every method.

Built from ``ArchitectureSpec(kind="transformer", ...)``; the architecture lives in ``spec.extra``
(``vocab_size``, ``max_len``, ``d_model``, ``n_layers``, ``n_heads``, ``d_ff``, ``embed_rank``) and
``spec.in_features`` is the input width (``max_len`` token ids). Inputs are int64 (N, max_len) ids,
right-padded with [PAD] = 0 and starting with [CLS] (see :mod:`model_core.data.tokenizer`).

Per method: token embedding (low-rank Bayesian E = A Bᵀ for ``lowrank``/``lrsvd``/``lowrank-ens``,
mean-field for ``bbb``, deterministic otherwise), sinusoidal positions (no parameters), ``n_layers``
pre-norm blocks whose attention projections (fused QKV and output) and FFN layers are
:class:`LowRankBayesLinear` (rank ``spec.rank``), :class:`MeanFieldLinear`, :class:`Rank1BayesLinear`
or deterministic as the method says, a pooled vector — the [CLS] position, or with
``extra["pooling"] = "mean"`` the mean over the non-padding positions — through a final LayerNorm, and a
head on it (mean-field for low-rank methods: a d→1 layer has nothing to factorise, as in the MLP). MC
dropout drops the embedding output, each residual branch and the pooled vector.

``predictive(x, ctx)`` returns (S, N, 1) logits with every activation laid out (S, N, ·) — no Python
loop over samples; one weight sample is shared by all tokens of a sequence (see
:mod:`model_core.layers.attention`). Rows are processed in chunks that bound memory and, for multi-block
noise sources (merged requests), block by block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from model_core.layers.attention import EncoderBlock, ForwardPath, Path, PredictivePath, shared_sample_linear
from model_core.layers.base import BayesianModule, PredictiveContext
from model_core.layers.deterministic import DeterministicLinear
from model_core.layers.embedding import DeterministicEmbedding, LowRankBayesEmbedding, MeanFieldEmbedding
from model_core.layers.lowrank import LowRankBayesLinear, default_rank_ok
from model_core.layers.meanfield import MeanFieldLinear
from model_core.models.ensemble import Ensemble
from model_core.models.mlp import make_linear
from model_core.models.spec import (
    DEFAULT_ETA,
    DEFAULT_TRANSFORMER,
    ArchitectureSpec,
    Likelihood,
    Method,
    Pooling,
)
from model_core.priors import prior_from_dict

__all__ = [
    "DEFAULT_TRANSFORMER",
    "BayesTransformer",
    "Pooling",
    "TransformerEnsemble",
    "lrsvd_init",
    "transformer_spec",
]

PAD_ID = 0  # kept equal to model_core.data.tokenizer.PAD_ID (the model does not import the data package)

#: Upper bound on S·rows·L·width floats of the widest activation of one predictive chunk (~128 MB).
PREDICTIVE_CHUNK_ELEMENTS = 32 * 1024 * 1024
LOWRANK_METHODS = (Method.LOWRANK, Method.LRSVD, Method.LOWRANK_ENS)


def _pool_cls(h: Tensor, key_mask: Tensor) -> Tensor:
    return h[:, 0]


def _pool_mean(h: Tensor, key_mask: Tensor) -> Tensor:
    mask = key_mask.unsqueeze(-1).to(h.dtype)
    return (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)


#: (G, L, d) token states after the last block and the (G, L) non-padding mask -> (G, d), before the
#: final LayerNorm (so [CLS] pooling computes exactly what it did before pooling was a choice)
POOLERS: dict[Pooling, Callable[[Tensor, Tensor], Tensor]] = {
    Pooling.CLS: _pool_cls,
    Pooling.MEAN: _pool_mean,
}


def transformer_spec(
    method: Method,
    vocab_size: int,
    max_len: int,
    rank: int | None = 16,
    embed_rank: int | None = None,
    members: int = 1,
    dropout: float = 0.1,
    eta: float | None = None,
    pooling: Pooling | str = Pooling.CLS,
    **arch: int,
) -> ArchitectureSpec:
    """An ``ArchitectureSpec`` for a binary text classifier; ``arch`` overrides DEFAULT_TRANSFORMER keys.

    ``eta`` scales the low-rank factors' initial posterior σ (default :data:`DEFAULT_ETA`; ignored by
    other methods); ``pooling`` is recorded only when it is not the default [CLS] pooling, so specs
    written before the option existed are unchanged.
    """
    unknown = set(arch) - set(DEFAULT_TRANSFORMER)
    if unknown:
        raise ValueError(f"unknown transformer settings {sorted(unknown)}")
    cfg = {**DEFAULT_TRANSFORMER, **arch}
    if cfg["d_model"] % cfg["n_heads"]:
        raise ValueError(f"d_model {cfg['d_model']} is not a multiple of n_heads {cfg['n_heads']}")
    uses_rank = method in LOWRANK_METHODS
    extra: dict[str, Any] = {"vocab_size": int(vocab_size), "max_len": int(max_len), **cfg}
    if uses_rank:
        extra["embed_rank"] = int(embed_rank or rank or 16)
        extra["eta"] = DEFAULT_ETA if eta is None else float(eta)
    if Pooling(pooling) is not Pooling.CLS:
        extra["pooling"] = Pooling(pooling).value
    return ArchitectureSpec(
        kind="transformer",
        method=method,
        in_features=max_len,
        hidden=[cfg["d_model"]] * cfg["n_layers"],
        out_features=1,
        likelihood=Likelihood.BERNOULLI,
        rank=rank if uses_rank else None,
        members=members,
        dropout=dropout,
        activation="gelu",
        extra=extra,
    )


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table


def _setting(spec: ArchitectureSpec, key: str) -> int:
    if key in spec.extra:
        return int(spec.extra[key])
    if key in DEFAULT_TRANSFORMER:
        return DEFAULT_TRANSFORMER[key]
    raise ValueError(f"transformer spec needs extra[{key!r}]")


class BayesTransformer(BayesianModule):
    """Token ids (N, L) -> one logit per sequence: (N, 1) by ``forward``, (S, N, 1) by ``predictive``."""

    positions: Tensor

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        if spec.out_features != 1 or spec.likelihood is not Likelihood.BERNOULLI:
            raise ValueError("the transformer classifier has a single Bernoulli logit")
        self.spec = spec
        vocab, self.max_len = _setting(spec, "vocab_size"), _setting(spec, "max_len")
        d, heads, d_ff = _setting(spec, "d_model"), _setting(spec, "n_heads"), _setting(spec, "d_ff")
        layers = _setting(spec, "n_layers")
        if spec.in_features != self.max_len:
            raise ValueError(f"in_features {spec.in_features} != max_len {self.max_len}")
        self.d_model, self.d_ff = d, d_ff
        prior = prior_from_dict(spec.prior)
        method = spec.method
        eta = float(spec.extra.get("eta", DEFAULT_ETA))
        if method in LOWRANK_METHODS:
            assert spec.rank is not None
            self.embed: BayesianModule = LowRankBayesEmbedding(
                vocab, d, int(spec.extra.get("embed_rank", spec.rank)), prior=prior, eta=eta
            )
        elif method is Method.BBB:
            self.embed = MeanFieldEmbedding(vocab, d, prior=prior)
        else:
            self.embed = DeterministicEmbedding(vocab, d)

        def linear(n: int, m: int) -> BayesianModule:
            rank = spec.rank if spec.rank is not None and default_rank_ok(n, m, spec.rank) else None
            if method in LOWRANK_METHODS and rank is not None:
                return LowRankBayesLinear(n, m, rank, prior=prior, eta=eta)
            return make_linear(spec, n, m, rank)

        self.dropout = spec.dropout if method is Method.MCDROPOUT else 0.0
        self.register_buffer("positions", sinusoidal_positions(self.max_len, d), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(d, heads, d_ff, linear, self.dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = linear(d, 1)
        self.pool = POOLERS[Pooling(spec.extra.get("pooling", Pooling.CLS.value))]

    # -- shared body ---------------------------------------------------------------------------
    def _trim(self, ids: Tensor) -> Tensor:
        """Drop the all-[PAD] columns at the right (the result is identical: pads are masked)."""
        if ids.dim() != 2 or ids.shape[1] > self.max_len:
            raise ValueError(f"token ids must be (N, L<={self.max_len}), got {tuple(ids.shape)}")
        used = (ids != PAD_ID).any(0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        return ids[:, :length]

    def _encode(self, emb: Tensor, key_mask: Tensor, path: Path) -> Tensor:
        """emb (G, L, d) -> pooled (G, d) after the blocks, then the final norm."""
        h = path.dropout(emb + self.positions[: emb.shape[1]], self.dropout)
        for block in self.blocks:
            h = block.run(h, key_mask, path)  # type: ignore[operator]
        return path.dropout(self.norm(self.pool(h, key_mask)), self.dropout)

    # -- training / mean -----------------------------------------------------------------------
    def forward(self, ids: Tensor) -> Tensor:
        ids = self._trim(ids)
        path = ForwardPath(self.mode)
        pooled = self._encode(self.embed(ids), ids != PAD_ID, path)
        return path.linear(self.head, pooled.unsqueeze(1)).squeeze(1)

    # -- S-sample prediction -------------------------------------------------------------------
    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        """(N, L) ids -> (S, N, 1) logits; one weight sample per Monte Carlo sample for every token."""
        if x.dim() != 2:
            raise ValueError(f"token ids must be (N, L), got {tuple(x.shape)}")
        n = int(x.shape[0])
        if ctx.noise.rows != n:
            raise ValueError(f"noise source covers {ctx.noise.rows} rows but x has {n}")
        if n == 0:
            return torch.zeros(ctx.samples, 0, 1, device=x.device)
        if self.spec.method is Method.DETERMINISTIC:  # every sample is the same network: run it once
            out = self.forward(x)
            return out.unsqueeze(0).expand(ctx.samples, *out.shape)
        width = max(self.d_ff, 3 * self.d_model)
        parts = []
        for lo, hi, block in ctx.noise.blocks():
            if hi == lo:
                continue
            rows = x[lo:hi]
            max_rows = max(1, PREDICTIVE_CHUNK_ELEMENTS // (ctx.samples * self._trim(rows).shape[1] * width))
            for a, b, sub in block.chunks(max_rows):
                parts.append(
                    self._predictive_chunk(rows[a:b], PredictiveContext(ctx.samples, sub, ctx.backend))
                )
        return torch.cat(parts, dim=1)

    def _predictive_chunk(self, ids: Tensor, ctx: PredictiveContext) -> Tensor:
        ids = self._trim(ids)
        s, (b, length) = ctx.samples, ids.shape
        emb = self.embed.predictive(ids, ctx)  # (S, B, L, d)
        key_mask = (ids != PAD_ID).unsqueeze(0).expand(s, b, length).reshape(s * b, length)
        path = PredictivePath(ctx, b)
        pooled = self._encode(emb.reshape(s * b, length, self.d_model), key_mask, path)  # (S·B, d)
        return shared_sample_linear(self.head, pooled.view(s, b, self.d_model), ctx, b)

    def kl(self) -> Tensor:
        """KL over the embedding, every block and the head, spelled out (``self.blocks`` is an
        ``nn.ModuleList``, which is not itself a Bayesian module)."""
        total = self.embed.kl() + self.head.kl()
        for block in self.blocks:
            total = total + block.kl()  # type: ignore[operator]
        return total

    # -- cached draws --------------------------------------------------------------------------
    def build_cache(self, samples: int, ctx_noise: object) -> None:
        for mod in self.modules():
            if isinstance(mod, (LowRankBayesLinear, LowRankBayesEmbedding)):
                mod.build_cache(samples, ctx_noise)  # type: ignore[arg-type]


class TransformerEnsemble(Ensemble):
    """M independently initialised transformers (``ensemble``: deterministic; ``lowrank-ens``: low-rank)."""

    member_class = BayesTransformer

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        if not self.bayesian_members:  # one deterministic output per member, no copies
            return torch.stack([member(x) for member in self.members])
        return super().predictive(x, ctx)

    def build_cache(self, samples: int, ctx_noise: object) -> None:
        for member in self.members:
            member.build_cache(samples, ctx_noise)  # type: ignore[operator]


def lrsvd_init(model: BayesTransformer, dense: BayesTransformer) -> None:
    """LR-SVD: start a low-rank transformer from a trained deterministic one of the same shape.

    Linear layers take the truncated SVD of the dense weight (``LowRankBayesLinear.from_dense``) or
    its mean (mean-field head); the embedding takes the truncated SVD of the dense table
    (A = U_r √S_r, B = V_r √S_r); LayerNorms are copied.
    """
    sources = dict(dense.named_modules())
    for name, target in model.named_modules():
        source = sources.get(name)
        if isinstance(target, LowRankBayesLinear):
            assert isinstance(source, DeterministicLinear)
            init = LowRankBayesLinear.from_dense(source.linear, target.rank, prior=target.prior)
            target.load_state_dict(init.state_dict())
        elif isinstance(target, MeanFieldLinear):
            assert isinstance(source, DeterministicLinear)
            with torch.no_grad():
                target.weight_mu.copy_(source.linear.weight)
                if target.bias_mu is not None and source.linear.bias is not None:
                    target.bias_mu.copy_(source.linear.bias)
        elif isinstance(target, LowRankBayesEmbedding):
            assert isinstance(source, DeterministicEmbedding)
            u, s, vh = torch.linalg.svd(source.weight.detach(), full_matrices=False)
            k = min(target.rank, s.numel())
            root = s[:k].sqrt()
            with torch.no_grad():
                target.mu_a.zero_()
                target.mu_b.zero_()
                target.mu_a[:, :k] = u[:, :k] * root
                target.mu_b[:, :k] = vh[:k].T * root
        elif isinstance(target, nn.LayerNorm):
            assert isinstance(source, nn.LayerNorm)
            target.load_state_dict(source.state_dict())
