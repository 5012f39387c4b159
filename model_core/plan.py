"""A frozen serving pass for a batch-invariant MLP: what ``predict`` computes, without walking the model.

``predict(plan, x, samples, noise=...)`` runs it: the plan has a model's ``spec``, ``set_mode`` and
``predictive(x, ctx)``, so ``predict`` is the one loop (chunks, summaries) for both.

Why: :func:`model_core.predict.predict` is general, so every call sets the mode on every module, looks up
σ = softplus(ρ) per parameter, builds a posterior object per layer, checks arguments and picks a backend.
For a one-row S=128 request of the ICU model that Python costs ~50 µs of ~320. A plan does it once, when
the model is loaded, and keeps only the tensors the row-wise kernels of ``model_core/sampling/cpu.py``
read, so it computes the very bits ``predict`` computes with per-request noise (tested bitwise).

A plan is a snapshot of the parameters: build a new one after changing them (the service loads a model
once and never changes it; a hot reload builds a new runtime and plan).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model_core.layers.base import Mode, PredictiveContext
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.layers.meanfield import MeanFieldLinear
from model_core.models.mlp import BayesMLP
from model_core.models.spec import ArchitectureSpec
from model_core.predict import batch_invariant
from model_core.sampling.cpu import RowConstants, lrt_rows, meanfield_rows, row_constants
from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend

Step = Callable[[Tensor, int, NoiseSource], Tensor]


@dataclass(frozen=True)
class _LowRankStep:
    constants: RowConstants

    def __call__(self, x: Tensor, samples: int, noise: NoiseSource) -> Tensor:
        return lrt_rows(x, self.constants, samples, noise)


@dataclass(frozen=True)
class _MeanFieldStep:
    w_mu: Tensor
    w_var: Tensor
    b_mu: Tensor | None
    b_var: Tensor | None

    def __call__(self, x: Tensor, samples: int, noise: NoiseSource) -> Tensor:
        return meanfield_rows(x, self.w_mu, self.w_var, self.b_mu, self.b_var, samples, noise)


def _step(layer: nn.Module) -> Step:
    if isinstance(layer, LowRankBayesLinear):
        return _LowRankStep(row_constants(layer.posterior()))
    if isinstance(layer, MeanFieldLinear):
        w_sigma, b_sigma = layer.sigmas()
        b_var = None if b_sigma is None else b_sigma * b_sigma
        b_mu = None if layer.bias_mu is None else layer.bias_mu.detach().clone()  # copies: a snapshot
        return _MeanFieldStep(layer.weight_mu.detach().clone(), w_sigma * w_sigma, b_mu, b_var)
    raise TypeError(f"no row-wise step for {type(layer).__name__}")


class RowwisePlan:
    """The batch-invariant S-sample pass of a low-rank / mean-field MLP on the CPU, frozen at build."""

    def __init__(self, steps: list[Step], activation: Callable[[Tensor], Tensor], spec: ArchitectureSpec):
        self.steps = steps
        self.activation = activation
        self.spec = spec
        self.max_width = max(spec.widths)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether a plan can be built: exactly the models :func:`batch_invariant` vouches for."""
        return batch_invariant(model, Backend.LRT, "cpu")

    @classmethod
    def build(cls, model: nn.Module) -> RowwisePlan:
        if not cls.supports(model):
            raise ValueError(
                f"{type(model).__name__} has no batch-invariant row-wise pass; use model_core.predict.predict"
            )
        assert isinstance(model, BayesMLP)
        with torch.no_grad():
            steps = [_step(layer) for layer in model.layers]
        return cls(steps, torch.relu_, model.spec)  # ReLU (batch_invariant says so), in place: our buffer

    def set_mode(self, mode: Mode) -> None:
        """A plan has one mode, sampling (the call :func:`~model_core.predict.predict` makes on a model)."""
        if mode is not Mode.SAMPLE:
            raise ValueError(f"a plan only samples; got mode {mode}")

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        """(N, in) -> (S, N, out), the bits of ``model.predictive`` with the ``lrt`` backend, for
        per-request noise; run it through :func:`~model_core.predict.predict` like the model itself."""
        noise, samples = ctx.noise, ctx.samples
        if not noise.rowwise or noise.rows != x.shape[0]:
            raise ValueError("a plan needs per-request noise (NoiseSource.from_seeds) covering every row")
        if ctx.backend not in (Backend.AUTO, Backend.LRT):
            raise ValueError(f"a plan runs the row-wise lrt pass; got backend {ctx.backend.value!r}")
        last = len(self.steps) - 1
        for i, step in enumerate(self.steps):
            x = step(x, samples, noise)
            if i < last:
                x = self.activation(x)
        return x
