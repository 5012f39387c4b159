"""Architecture specification: what the checkpoint manifest stores and the registry builds from."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Method(str, Enum):
    LOWRANK = "lowrank"
    LOWRANK_ENS = "lowrank-ens"
    LRSVD = "lrsvd"
    BBB = "bbb"
    RANK1 = "rank1"
    DETERMINISTIC = "deterministic"
    ENSEMBLE = "ensemble"
    MCDROPOUT = "mcdropout"


class Likelihood(str, Enum):
    BERNOULLI = "bernoulli"  # binary: one logit
    CATEGORICAL = "categorical"  # multiclass: C logits
    GAUSSIAN = "gaussian"  # heteroscedastic regression: mean and softplus scale


ENSEMBLE_METHODS = frozenset({Method.ENSEMBLE, Method.LOWRANK_ENS})


class ArchitectureSpec(BaseModel):
    """Everything needed to rebuild a model's module tree (and so to verify tensor names and shapes)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "mlp"
    method: Method
    in_features: int = Field(gt=0)
    hidden: list[int] = Field(default_factory=lambda: [128, 128])
    out_features: int = Field(gt=0)
    likelihood: Likelihood = Likelihood.BERNOULLI
    rank: int | None = Field(default=None, gt=0)
    ranks: list[int | None] = Field(default_factory=list, description="rank per layer; None = not low-rank")
    activation: str = "relu"
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    members: int = Field(default=1, ge=1)
    prior: dict[str, Any] | None = None
    target_loc: float = 0.0  # regression: the model predicts (y - loc) / scale
    target_scale: float = Field(default=1.0, gt=0.0)
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ArchitectureSpec:
        if self.method in (Method.LOWRANK, Method.LOWRANK_ENS, Method.LRSVD) and self.rank is None:
            raise ValueError(f"method {self.method.value!r} needs a rank")
        if self.likelihood is Likelihood.GAUSSIAN and self.out_features != 2:
            raise ValueError("a Gaussian likelihood needs out_features = 2 (mean and scale)")
        if self.method in ENSEMBLE_METHODS and self.members < 2:
            raise ValueError("an ensemble needs at least 2 members")
        return self

    @property
    def widths(self) -> list[int]:
        return [self.in_features, *self.hidden, self.out_features]


# -- text models (torch-free: `lrbnn train`'s flags and the manifests read these without torch)
#: Default size (see docs/sentiment.md for why it is below the paper's 4 layers × d = 256).
DEFAULT_TRANSFORMER: dict[str, int] = {"d_model": 256, "n_layers": 2, "n_heads": 4, "d_ff": 512}
#: Initial posterior scale of the low-rank factors, η·(σ_W²/r)^¼ (the MLP uses η = 0.5). A deep encoder
#: compounds the weight noise of ~4 factorised layers per block plus the embedding: at η = 0.5 the
#: initial network is mostly noise and barely trains in a few epochs; η = 0.1 matches the 10 % relative
#: scale at which the mean-field layers start.
DEFAULT_ETA = 0.1


class Pooling(str, Enum):
    """How the encoder's token states become the one vector the head reads (``spec.extra["pooling"]``)."""

    CLS = "cls"  # the [CLS] position (the default; a spec without the key means this)
    MEAN = "mean"  # the mean over the sequence's non-padding positions, [CLS] included
