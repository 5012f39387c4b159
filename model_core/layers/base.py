"""What every layer of the library shares: explicit forward modes and the predictive context.

A layer's ``forward`` obeys its :class:`Mode`: ``sample`` draws one weight sample per call (training,
reparameterised), ``mean`` uses the posterior means. S-sample prediction goes through
``predictive(x, ctx)`` which maps (N, n) or (S, N, n) inputs to (S, N, m) outputs in one call, with no
Python loop over samples. ``kl()`` returns a scalar sum; deterministic layers return zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor, nn

from model_core.sampling.noise import NoiseSource
from model_core.sampling.types import Backend


class Mode(str, Enum):
    SAMPLE = "sample"
    MEAN = "mean"


@dataclass
class PredictiveContext:
    """How S predictive samples are drawn: count, noise, backend and whether cached draws are used."""

    samples: int
    noise: NoiseSource
    backend: Backend = Backend.AUTO

    @property
    def use_cache(self) -> bool:
        return self.backend is Backend.CACHED


def softplus_floor(rho: Tensor, floor: float) -> Tensor:
    """σ = softplus(ρ) + floor: smooth, positive, never exp (which overflows and has no floor)."""
    return nn.functional.softplus(rho) + floor


def inverse_softplus(sigma: float) -> float:
    """ρ such that softplus(ρ) = sigma."""
    return float(torch.log(torch.expm1(torch.tensor(float(sigma)))))


def expand_samples(x: Tensor, samples: int) -> Tensor:
    """View a shared (N, d) input as (S, N, d) without copying."""
    return x.unsqueeze(0).expand(samples, *x.shape) if x.dim() == 2 else x


def bayesian_children(module: nn.Module) -> list[BayesianModule]:
    """The nearest BayesianModule descendants, looking through plain containers (ModuleList, Sequential).

    Each owns the KL of everything below it, so summing over these counts every parameter exactly once.
    """
    found: list[BayesianModule] = []
    for child in module.children():
        if isinstance(child, BayesianModule):
            found.append(child)
        else:
            found.extend(bayesian_children(child))
    return found


class BayesianModule(nn.Module):
    """Base class: a mode switch and a KL sum over its Bayesian children."""

    mode: Mode = Mode.SAMPLE

    def set_mode(self, mode: Mode | str) -> BayesianModule:
        mode = Mode(mode)
        for mod in self.modules():
            # only where it changes: nn.Module.__setattr__ is slow, and predict sets the mode every call
            if isinstance(mod, BayesianModule) and mod.mode is not mode:
                mod.mode = mode
        return self

    def kl(self) -> Tensor:
        """KL(q ‖ p) summed over every Bayesian parameter below this module."""
        total = torch.zeros(())
        for layer in bayesian_children(self):
            total = total + layer.kl()
        return total

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        raise NotImplementedError

    def cached_sigma(self, rho: Tensor, floor: float) -> Tensor:
        """``softplus_floor(rho, floor)``, memoised while ``rho`` is unchanged and no gradient is wanted.

        Why: a served model computes the same σ for every batch (a dozen small ops per layer, ~10 % of a
        one-row request's compute); training changes ρ every step and needs the graph, so it never
        hits the cache, nor does tracing or export (the graph must compute σ). The key is the tensor's
        identity, storage and in-place version counter, so an optimizer step, ``load_state_dict`` or
        ``.to()`` invalidates it.
        """
        if (
            (torch.is_grad_enabled() and rho.requires_grad)
            or torch.compiler.is_compiling()  # torch.export / torch.compile (ONNX export): a pure graph
            or torch.jit.is_tracing()
        ):
            return softplus_floor(rho, floor)
        cache: dict[int, tuple[tuple[int, int, float], Tensor]] = self.__dict__.setdefault("_sigma_cache", {})
        key = (rho._version, rho.data_ptr(), floor)
        hit = cache.get(id(rho))
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, usable outside inference mode
            value = softplus_floor(rho, floor)
        cache[id(rho)] = (key, value)
        return value

    def parameter_count(self) -> int:
        """Learnable scalars (means and scales both count)."""
        return sum(p.numel() for p in self.parameters())
