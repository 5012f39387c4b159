"""S-sample prediction: predictive mean, total / epistemic / aleatoric uncertainty and the OOD score.

Definitions (per example):

* Classification (Bernoulli or categorical), with p_s the class probabilities of sample s and
  p̄ = mean_s p_s: ``mean`` = p̄; ``entropy`` = H(p̄); ``aleatoric`` = mean_s H(p_s) (expected entropy);
  ``epistemic`` = H(p̄) − mean_s H(p_s), the mutual information between label and weights;
  ``variance`` = p̄(1 − p̄) summed over classes (the Bernoulli/categorical predictive variance), which
  splits into mean_s p_s(1 − p_s) + Var_s p_s; ``ood_score`` = the mutual information.
* Regression (heteroscedastic Gaussian head, μ_s, σ_s): ``mean`` = mean_s μ_s; ``epistemic`` = Var_s μ_s
  (population variance of the sampled means); ``aleatoric`` = mean_s σ_s²; ``variance`` = their sum;
  ``ood_score`` = predictive std. Intervals are calibration's job, not the model's: the served one is
  :func:`model_core.conformal.served_interval` (split-conformal, from these moments).

Memory stays bounded for large S·N: rows are processed in chunks that keep whole noise blocks together,
so the noise a request gets never depends on what else shares its batch. With per-request noise
(``NoiseSource.from_seeds``, the serving path, ``rowwise``) :func:`predict` summarises with
``summarize(..., rowwise=True)``, which reduces each row on its own; together with the row-wise ``lrt``
pass (``model_core/sampling/cpu.py``) the answers are then bitwise batch invariant where
:func:`batch_invariant` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext
from model_core.models.spec import ArchitectureSpec, Likelihood
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend

#: Upper bound on S·rows·width floats held by one chunk's widest activation (~256 MB in fp32).
DEFAULT_CHUNK_ELEMENTS = 64 * 1024 * 1024
REGRESSION_SCALE_FLOOR = 1e-3


def gaussian_scale(raw: Tensor) -> Tensor:
    """The Gaussian head's standard deviation from its raw output, in standardised units: softplus plus
    a floor (no zero scale, so the NLL stays finite). The one definition for training's NLL and both
    predictive summaries; elementwise, so slicing before or after it gives the same bits."""
    return nn.functional.softplus(raw) + REGRESSION_SCALE_FLOOR


@dataclass
class Prediction:
    """Per-example predictive summaries; ``mean`` is (N,) for binary/regression and (N, C) for multiclass."""

    mean: Tensor
    variance: Tensor
    epistemic: Tensor
    aleatoric: Tensor
    entropy: Tensor
    ood_score: Tensor

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    @staticmethod
    def concat(parts: list[Prediction]) -> Prediction:
        out = {}
        for f in fields(Prediction):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if vals[0] is None else torch.cat(vals, dim=0)
        return Prediction(**out)  # type: ignore[arg-type]


def _entropy(p: Tensor, dim: int = -1) -> Tensor:
    return -(torch.xlogy(p, p)).sum(dim)


def summarize(outputs: Tensor, spec: ArchitectureSpec, *, rowwise: bool = False) -> Prediction:
    """Turn raw network outputs (S, N, out) into predictive summaries.

    ``rowwise`` (the serving mode, ``NoiseSource.rowwise``): each row summarised on its own, so its bits
    do not depend on the other rows (:func:`_summarize_rows`); otherwise vectorised over the batch. The
    two agree to float32 rounding.
    """
    return _summarize_rows(outputs, spec) if rowwise else _summarize_batch(outputs, spec)


def _summarize_batch(outputs: Tensor, spec: ArchitectureSpec) -> Prediction:
    lik = spec.likelihood
    if lik is Likelihood.GAUSSIAN:
        mu = outputs[..., 0] * spec.target_scale + spec.target_loc
        sigma = gaussian_scale(outputs[..., 1]) * spec.target_scale
        mean = mu.mean(0)
        epistemic = mu.var(0, unbiased=False)
        aleatoric = (sigma * sigma).mean(0)
        variance = epistemic + aleatoric
        std = variance.sqrt()
        gauss_entropy = 0.5 * torch.log(2 * math.pi * math.e * variance)
        return Prediction(mean, variance, epistemic, aleatoric, gauss_entropy, std)
    if lik is Likelihood.BERNOULLI:
        p1 = torch.sigmoid(outputs[..., 0])
        probs = torch.stack([1 - p1, p1], dim=-1)
    else:
        probs = torch.softmax(outputs, dim=-1)
    p_bar = probs.mean(0)
    entropy = _entropy(p_bar)
    aleatoric = _entropy(probs).mean(0)
    # MI = mean_s KL(p_s ‖ p̄): equal to H(p̄) − mean_s H(p_s), but exactly 0 when all samples agree
    # (a deterministic model), where the difference of entropies would leave rounding noise.
    log_ratio = torch.log(probs.clamp_min(1e-30)) - torch.log(p_bar.clamp_min(1e-30))
    epistemic = (probs * log_ratio).sum(-1).mean(0)
    # where every sample agrees (a deterministic model) the MI is exactly 0: p̄ can be off by a few ulps
    # from the samples it averages, and that rounding noise must not rank examples as an OOD score
    agree = (probs.amax(0) - probs.amin(0)).amax(-1) == 0
    epistemic = torch.where(agree, torch.zeros_like(epistemic), epistemic.clamp_min(0.0))
    variance = (p_bar * (1 - p_bar)).sum(-1) if lik is Likelihood.CATEGORICAL else p_bar[:, 1] * p_bar[:, 0]
    mean = p_bar[:, 1] if lik is Likelihood.BERNOULLI else p_bar
    return Prediction(mean, variance, epistemic, aleatoric, entropy, epistemic)


#: Elementwise ops on at most this many elements run on one thread (torch's TensorIterator grain size).
_SERIAL_ELEMENTS = 32768
#: Row lengths are padded to a multiple of this, so that no element falls in a loop's scalar tail.
_PAD = 64


def _padded(t: Tensor, fill: float = 0.0) -> Tensor:
    """(R, ...) -> (R, L) with L a multiple of ``_PAD``: the row's elements first, then ``fill``."""
    flat = t.reshape(t.shape[0], -1)
    width = flat.shape[1]
    out = flat.new_full((flat.shape[0], -(-width // _PAD) * _PAD), fill)
    out[:, :width] = flat
    return out


def _summarize_rows(outputs: Tensor, spec: ArchitectureSpec) -> Prediction:
    """:func:`summarize` computed so that each row's summaries do not depend on the other rows.

    The same definitions, but every reduction over samples runs over a row's own contiguous samples (its
    order fixed by S alone), every transcendental op (sigmoid, log, softplus, exp) runs on rows padded to a
    multiple of 64 elements in chunks small enough for one thread, so no element falls in a scalar loop
    tail whose rounding differs from the vectorised loop's, and class sums are explicit adds.
    """
    samples, n_rows, width = outputs.shape
    if n_rows == 0:  # no rows: the empty fields of the vectorised summary
        return _summarize_batch(outputs, spec)
    per_row = -(-max(width, 2) * (samples + 1) // _PAD) * _PAD
    step = max(1, _SERIAL_ELEMENTS // per_row - 1)
    parts = []
    for lo in range(0, n_rows, step):
        o = outputs[:, lo : lo + step].permute(1, 2, 0)  # (R, C, S): a row's samples contiguous
        parts.append(_summarize_block(o, spec))
    return parts[0] if len(parts) == 1 else Prediction.concat(parts)


def _class_sum(t: Tensor) -> Tensor:
    """Σ over the class axis (1) of (R, C, ...) by explicit adds in class order (no reduction kernel)."""
    total = t[:, 0]
    for c in range(1, t.shape[1]):
        total = total + t[:, c]
    return total


def _summarize_block(o: Tensor, spec: ArchitectureSpec) -> Prediction:
    rows, width, samples = o.shape
    lik = spec.likelihood
    if lik is Likelihood.GAUSSIAN:
        raw = _padded(o[:, :2])  # (R, L): [μ raw (S), σ raw (S), pad]
        mu = (raw[:, :samples] * spec.target_scale + spec.target_loc).contiguous()
        sigma = gaussian_scale(raw)[:, samples : 2 * samples] * spec.target_scale
        mean = mu.mean(1)
        dev = mu - mean.unsqueeze(1)
        epistemic = (dev * dev).mean(1)
        aleatoric = (sigma * sigma).mean(1)
        variance = epistemic + aleatoric
        std = variance.sqrt()
        log_var = torch.log(_padded(2 * math.pi * math.e * variance.unsqueeze(1), 1.0))[:, 0]
        gauss_entropy = 0.5 * log_var
        return Prediction(mean, variance, epistemic, aleatoric, gauss_entropy, std)
    if lik is Likelihood.BERNOULLI:
        return _bernoulli_rows(o[:, 0])
    z = o - o.amax(1, keepdim=True)
    e = torch.exp(_padded(z))[:, : width * samples].view(rows, width, samples)
    probs = e / _class_sum(e).unsqueeze(1)
    classes = probs.shape[1]
    p_bar = probs.mean(2)  # (R, C)
    # one padded log for the samples' and the mean's probabilities: [probs (C·S), p̄ (C), pad]
    logs = torch.log(_padded(torch.cat([probs.reshape(rows, -1), p_bar], 1).clamp_min(1e-30)))
    log_p = logs[:, : classes * samples].view(rows, classes, samples)
    log_bar = logs[:, classes * samples : classes * (samples + 1)]
    # xlogy(p, p) = p log p, and 0 where p = 0 (p · log(1e-30) is then a signed zero: the same sum)
    entropy = -_class_sum(p_bar * log_bar)
    aleatoric = (-_class_sum(probs * log_p)).mean(1)
    epistemic = _class_sum(probs * (log_p - log_bar.unsqueeze(2))).mean(1)
    agree = (probs.amax(2) == probs.amin(2)).all(1)  # every sample agrees: the MI is exactly 0
    epistemic = torch.where(agree, torch.zeros_like(epistemic), epistemic.clamp_min(0.0))
    return Prediction(p_bar, _class_sum(p_bar * (1 - p_bar)), epistemic, aleatoric, entropy, epistemic)


def _bernoulli_rows(z: Tensor) -> Prediction:
    """The Bernoulli summaries of (R, S) logits, from the logits, accurate at both tails.

    With a = |z|: a sample's entropy is H(p_s) = softplus(−a) + a·σ(−a) (no log of a probability that
    rounds to 0 or 1, and no difference of near-equal terms whatever z's sign), and H(p̄) is computed
    from the smaller of p̄ = mean σ(z) and q̄ = mean σ(−z), s̄, as −s̄ log s̄ − (1 − s̄) log1p(−s̄). So the
    mutual information H(p̄) − mean_s H(p_s) keeps ~1e-4 relative accuracy for confident predictions
    (a float64 reference at z = ±8 and ±15 with spread 0.05: MI 4e-10 - 5e-7; tested), where 1 − p̄ and
    softplus(z) − z·p would lose it; it is clamped at 0, and exactly 0 where every sample agrees.
    """
    samples = z.shape[1]
    zp = z if samples % _PAD == 0 and z.is_contiguous() else _padded(z)
    nz = torch.neg(zp)
    p_all, q_all = torch.sigmoid(zp), torch.sigmoid(nz)
    h_all = nn.functional.softplus(torch.minimum(zp, nz))  # softplus(−a)
    h_all.add_(torch.abs(zp).mul_(torch.minimum(p_all, q_all)))  # + a·σ(−a)
    p, q = p_all[:, :samples], q_all[:, :samples]
    aleatoric = h_all[:, :samples].mean(1)
    p_bar, q_bar = p.mean(1), q.mean(1)
    small = _padded(torch.minimum(p_bar, q_bar).unsqueeze(1), 0.5)  # s̄, then padding for the logs
    s_bar = small[:, 0]
    entropy = torch.log(small.clamp_min(1e-30))[:, 0].mul_(s_bar)
    entropy.add_(torch.log1p(small.neg())[:, 0].mul_(1 - s_bar)).neg_()
    epistemic = (entropy - aleatoric).clamp_min_(0.0)
    epistemic.masked_fill_(p.amax(1) == p.amin(1), 0.0)  # every sample agrees: the MI is exactly 0
    return Prediction(p_bar, p_bar * q_bar, epistemic, aleatoric, entropy, epistemic)


def batch_invariant(model: nn.Module, backend: Backend | str, device: torch.device | str = "cpu") -> bool:
    """Whether :func:`predict` gives every noise block bit-identical answers alone or in a merged batch.

    True for a ReLU MLP of low-rank and mean-field layers (``lowrank``, ``lrsvd``, ``bbb``) with the ``lrt``
    backend on the CPU: each row's GEMMs have shapes that do not depend on N, and
    ``summarize(..., rowwise=True)`` reduces each row on its own (``tests/model_core/sampling/
    test_batch_invariance.py``). Other architectures and backends may round a row differently with its
    batch's size.
    """
    from model_core.layers.lowrank import LowRankBayesLinear
    from model_core.layers.meanfield import MeanFieldLinear
    from model_core.models.mlp import BayesMLP

    if Backend(backend) is not Backend.LRT or torch.device(device).type != "cpu":
        return False
    if not isinstance(model, BayesMLP) or model.dropouts is not None:
        return False
    # ReLU is exact (a max); GELU's vectorised and scalar-tail loops round differently, so a row's bits
    # would depend on where it falls in the batch (seen with blocks [1, 40, 3, 70, 1])
    if model.spec.activation != "relu":
        return False
    return all(isinstance(layer, (LowRankBayesLinear, MeanFieldLinear)) for layer in model.layers)


class PredictivePass(Protocol):
    """What :func:`predict` runs: a Bayesian model, or a frozen pass of one (``model_core.plan``)."""

    spec: Any

    def set_mode(self, mode: Mode) -> None: ...

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor: ...


@torch.inference_mode()
def predict(
    model: BayesianModule | PredictivePass,
    x: Tensor,
    samples: int = 100,
    seed: int | None = None,
    noise: NoiseSource | None = None,
    backend: Backend | str = Backend.AUTO,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Prediction:
    """Predictive summaries for inputs ``x`` (N, in) from S Monte Carlo samples drawn in batched calls.

    The same ``seed`` (or an identically seeded ``noise`` source) and backend give the same answer.
    """
    spec: ArchitectureSpec = model.spec  # type: ignore[assignment]
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    n_rows = int(x.shape[0])
    if noise is None:
        noise = NoiseSource.from_seed(seed, n_rows)
    if noise.rows != n_rows:
        raise ValueError(f"noise source covers {noise.rows} rows but x has {n_rows}")
    model.set_mode(Mode.SAMPLE)
    width = max(spec.widths)
    max_rows = max(1, chunk_elements // (samples * width))
    # the noise source's mode: row-wise summaries for per-request noise (serving, bitwise batch
    # invariant), else the vectorised ones, which the recorded checkpoint metrics were computed with
    parts = []
    for lo, hi, sub in noise.chunks(max_rows):
        ctx = PredictiveContext(samples, sub, Backend(backend))
        parts.append(summarize(model.predictive(x[lo:hi], ctx), spec, rowwise=noise.rowwise))
    if not parts:
        return summarize(model.predictive(x, PredictiveContext(samples, noise, Backend(backend))), spec)
    return parts[0] if len(parts) == 1 else Prediction.concat(parts)
