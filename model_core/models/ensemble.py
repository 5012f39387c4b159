"""Deep ensembles of M independently seeded members (deterministic or low-rank Bayesian)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from model_core.layers.base import BayesianModule, PredictiveContext
from model_core.models.mlp import BayesMLP
from model_core.models.spec import ArchitectureSpec, Method


class Ensemble(BayesianModule):
    """Members share an architecture; predictive draws ceil(S/M) samples from each Bayesian member, one
    from each deterministic member, so the sample axis mixes members uniformly. Subclasses for other
    architectures only set ``member_class``."""

    member_class: Callable[[ArchitectureSpec], BayesianModule] = BayesMLP

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.spec = spec
        member_method = Method.LOWRANK if spec.method is Method.LOWRANK_ENS else Method.DETERMINISTIC
        member_spec = spec.model_copy(update={"method": member_method, "members": 1})
        self.members = nn.ModuleList(self.member_class(member_spec) for _ in range(spec.members))
        self.bayesian_members = member_method is not Method.DETERMINISTIC

    def forward(self, x: Tensor) -> Tensor:
        """Training: the sum of members' outputs is not meaningful, so forward stacks them (M, N, out)."""
        return torch.stack([member(x) for member in self.members])

    def predictive(self, x: Tensor, ctx: PredictiveContext) -> Tensor:
        if not self.bayesian_members:
            return torch.stack([member(x) for member in self.members])
        per = math.ceil(ctx.samples / len(self.members))
        sub = PredictiveContext(per, ctx.noise, ctx.backend)
        return torch.cat([member.predictive(x, sub) for member in self.members], dim=0)  # type: ignore[operator]

    def kl(self) -> Tensor:
        return torch.stack([member.kl() for member in self.members]).sum()  # type: ignore[operator]
