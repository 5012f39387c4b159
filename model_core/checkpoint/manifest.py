"""The checkpoint manifest (``manifest.json``): a pydantic model of the contract's fields.

Everything the server needs besides the tensors lives here: how to preprocess named inputs, what the
outputs mean, the OOD threshold and the drift reference. Unknown top-level keys are refused so that a
typo cannot silently drop a field.
"""

from __future__ import annotations

from enum import Enum
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from model_core.models.spec import ArchitectureSpec

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})


def _sorted(v: list[float]) -> list[float]:
    if any(b < a for a, b in pairwise(v)):
        raise ValueError("quantiles must be sorted")
    return v


#: evenly spaced quantiles of a score (drift references, p-values): at least two, sorted
SortedQuantiles = Annotated[list[float], Field(min_length=2), AfterValidator(_sorted)]


class Task(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


class OODScore(str, Enum):
    MUTUAL_INFORMATION = "mutual_information"
    PREDICTIVE_STD = "predictive_std"


class SamplingMode(str, Enum):
    """Fresh noise per request (seeded) or the S factor draws made once at load time."""

    FRESH = "fresh"
    CACHED = "cached"


class InputSchema(BaseModel):
    model_config = ConfigDict(extra="allow")

    kind: Literal["tabular", "sequence", "text"] = "tabular"
    #: For tabular inputs: the fitted preprocessing (``model_core.data.preprocessing.Preprocessor``).
    preprocessing: dict[str, Any] = Field(default_factory=dict)


class OutputSchema(BaseModel):
    model_config = ConfigDict(extra="allow")

    labels: list[str] | None = None
    positive_label: str | None = None
    target: str | None = None
    unit: str | None = None


class NoveltyCalibration(BaseModel):
    """The input-novelty detector (``model_core.novelty``): its arrays are ``novelty.safetensors``."""

    model_config = ConfigDict(extra="forbid")

    features: Literal["inputs", "window_summary", "token_embedding"]
    dim: int = Field(ge=1)
    #: flag when the novelty score exceeds this (jointly calibrated with ``ood_threshold``)
    threshold: float = Field(allow_inf_nan=False)
    #: evenly spaced quantiles of the calibration split's novelty scores (p-values, drift)
    quantiles: SortedQuantiles
    n_scores: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: scalars of the feature map (``pad_id`` for text)
    meta: dict[str, Any] = Field(default_factory=dict)


class ConformalCalibration(BaseModel):
    """Split-conformal q̂ (``model_core.conformal``): the interval or prediction set at ``level``."""

    model_config = ConfigDict(extra="forbid")

    level: float = Field(gt=0.0, lt=1.0)
    score: Literal["normalized_residual", "lac"]
    quantile: float = Field(ge=0.0, allow_inf_nan=False)
    n: int = Field(ge=1)


class Calibration(BaseModel):
    ood_score: OODScore
    #: flag when the epistemic score exceeds this (with a novelty detector: jointly calibrated)
    ood_threshold: float
    ood_quantile: float = Field(default=0.95, gt=0.0, lt=1.0)
    #: the combined OOD decision's stated false-alarm rate on in-distribution inputs
    ood_alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    novelty: NoveltyCalibration | None = None
    conformal: ConformalCalibration | None = None
    default_samples: int = Field(default=100, ge=1)
    sampling_mode: SamplingMode = SamplingMode.FRESH
    cache_seed: int = 0
    #: regression: width factor of the central ``interval_level`` interval fitted on validation data
    #: (``model_core.metrics.interval_scale``); 1.0 = the model's own Gaussian interval
    interval_scale: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    interval_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    #: the same width factor fitted at other levels, keyed by the level as a string ("0.9": the central
    #: 90 % interval the service answers, per the contract)
    interval_scales: dict[str, float] = Field(default_factory=dict)


class FeatureDistribution(BaseModel):
    """One input feature's training distribution, the reference of its served drift gauges
    (``model_core.feature_reference``): a numeric feature's evenly spaced quantiles on the preprocessed,
    unclipped scale, or a categorical feature's share of each category (the input schema's order)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["numeric", "categorical"]
    quantiles: SortedQuantiles | None = None
    #: numeric: the training share of values <= each quantile (not j / (n - 1) where values tie, e.g.
    #: an imputed median or a count feature: the drift statistics compare against this)
    cdf: SortedQuantiles | None = None
    proportions: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = None
    n: int = Field(ge=1, description="training rows the reference was computed from")

    @model_validator(mode="after")
    def _complete(self) -> FeatureDistribution:
        if self.kind == "numeric":
            if self.quantiles is None or self.cdf is None or len(self.cdf) != len(self.quantiles):
                raise ValueError(f"numeric feature {self.name!r} needs quantiles and a cdf of one length")
            if not (self.cdf[0] >= 0.0 and self.cdf[-1] <= 1.0):
                raise ValueError(f"the cdf of {self.name!r} must lie in [0, 1]")
        elif self.proportions is None:
            raise ValueError(f"categorical feature {self.name!r} needs proportions")
        return self


class DriftReference(BaseModel):
    """In-distribution validation OOD scores, stored as evenly spaced quantiles (sorted), and (tabular
    models) each input feature's training distribution."""

    score: OODScore
    quantiles: SortedQuantiles
    n_scores: int = Field(ge=1)
    features: list[FeatureDistribution] | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    model_version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
    task: Task
    architecture: ArchitectureSpec
    parameter_count: int = Field(ge=0)
    input_schema: InputSchema
    output_schema: OutputSchema
    calibration: Calibration
    drift_reference: DriftReference
    training: dict[str, Any] = Field(default_factory=dict)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
