"""S-sample prediction: predictive mean, total / epistemic / aleatoric uncertainty and the OOD score.

Definitions (per example):

* Classification (Bernoulli or categorical), with p_s the class probabilities of sample s and
  p̄ = mean_s p_s: ``mean`` = p̄; ``entropy`` = H(p̄); ``aleatoric`` = mean_s H(p_s) (expected entropy);
  ``epistemic`` = H(p̄) − mean_s H(p_s), the mutual information between label and weights;
  ``variance`` = p̄(1 − p̄) summed over classes (the Bernoulli/categorical predictive variance), which
  splits into mean_s p_s(1 − p_s) + Var_s p_s; ``ood_score`` = the mutual information.
* Regression (heteroscedastic Gaussian head, μ_s, σ_s): ``mean`` = mean_s μ_s; ``epistemic`` = Var_s μ_s
  (population variance of the sampled means); ``aleatoric`` = mean_s σ_s²; ``variance`` = their sum;
  ``ood_score`` = predictive std; ``interval`` = central 90 % interval of the Gaussian with that mean and
  variance (a moment-matched approximation of the predictive mixture).

Memory stays bounded for large S·N: rows are processed in chunks that keep whole noise blocks together,
so the result for a request never depends on what else shares its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, Mode, PredictiveContext
from model_core.models.spec import ArchitectureSpec, Likelihood
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend

#: Upper bound on S·rows·width floats held by one chunk's widest activation (~256 MB in fp32).
DEFAULT_CHUNK_ELEMENTS = 64 * 1024 * 1024
INTERVAL_LEVEL = 0.9
_Z90 = 1.6448536269514722  # standard normal quantile at 0.95
REGRESSION_SCALE_FLOOR = 1e-3


@dataclass
class Prediction:
    """Per-example predictive summaries; ``mean`` is (N,) for binary/regression and (N, C) for multiclass."""

    mean: Tensor
    variance: Tensor
    epistemic: Tensor
    aleatoric: Tensor
    entropy: Tensor
    ood_score: Tensor
    interval_low: Tensor | None = None
    interval_high: Tensor | None = None

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


def summarize(outputs: Tensor, spec: ArchitectureSpec) -> Prediction:
    """Turn raw network outputs (S, N, out) into predictive summaries."""
    lik = spec.likelihood
    if lik is Likelihood.GAUSSIAN:
        mu = outputs[..., 0] * spec.target_scale + spec.target_loc
        sigma = (nn.functional.softplus(outputs[..., 1]) + REGRESSION_SCALE_FLOOR) * spec.target_scale
        mean = mu.mean(0)
        epistemic = mu.var(0, unbiased=False)
        aleatoric = (sigma * sigma).mean(0)
        variance = epistemic + aleatoric
        std = variance.sqrt()
        gauss_entropy = 0.5 * torch.log(2 * math.pi * math.e * variance)
        return Prediction(
            mean, variance, epistemic, aleatoric, gauss_entropy, std, mean - _Z90 * std, mean + _Z90 * std
        )
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


def _chunks(noise: NoiseSource, max_rows: int) -> list[tuple[int, int, NoiseSource]]:
    """Row ranges that keep each noise block whole (a block larger than ``max_rows`` is split alone)."""
    out: list[tuple[int, int, NoiseSource]] = []
    start, cur_gens, cur_sizes = 0, [], []  # type: ignore[var-annotated]
    pos = 0

    def flush() -> None:
        nonlocal start, cur_gens, cur_sizes
        if cur_sizes:
            out.append(
                (start, start + sum(cur_sizes), NoiseSource(cur_gens, cur_sizes, noise.batch_invariant))
            )
            start += sum(cur_sizes)
            cur_gens, cur_sizes = [], []

    for gen, size in zip(noise.generators, noise.block_sizes, strict=True):
        if size > max_rows:
            flush()
            for lo in range(0, size, max_rows):
                n = min(max_rows, size - lo)
                out.append((pos + lo, pos + lo + n, NoiseSource([gen], [n], noise.batch_invariant)))
            start = pos + size
        else:
            if sum(cur_sizes) + size > max_rows:
                flush()
            if not cur_sizes:
                start = pos
            cur_gens.append(gen)
            cur_sizes.append(size)
        pos += size
    flush()
    return out


@torch.inference_mode()
def predict(
    model: BayesianModule,
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
    parts = []
    for lo, hi, sub in _chunks(noise, max_rows):
        ctx = PredictiveContext(samples, sub, Backend(backend))
        parts.append(summarize(model.predictive(x[lo:hi], ctx), spec))
    if not parts:
        return summarize(model.predictive(x, PredictiveContext(samples, noise, Backend(backend))), spec)
    return parts[0] if len(parts) == 1 else Prediction.concat(parts)
