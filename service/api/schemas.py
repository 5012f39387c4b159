"""Pydantic models of the V1 wire format, so the OpenAPI document is the real contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from model_core.data.coding import FeatureCoding
from service.api.body import whole_number

FeatureValue = float | int | bool | str | None
#: an integer JSON number (``2`` or ``2.0``, as JSON Schema's ``integer``), never a bool or a string
JsonInt = Annotated[StrictInt, BeforeValidator(whole_number)]


class PredictParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: JsonInt | None = Field(
        default=None, description="Monte Carlo samples S (1..LRBNN_MAX_SAMPLES); default from the manifest"
    )
    seed: JsonInt | None = Field(
        default=None, description="0..2**63-1; the same request and seed always give the same answer"
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[dict[str, Any]] = Field(
        description="one object per instance. Tabular: feature name -> raw value in the schema's unit; null "
        'or absent = not measured (imputed and listed in `imputed`). Sequence: {"hours": [one such '
        'object per hour, oldest first]}. Text: {"text": "..."}. See the model\'s `input` in /v1/models',
        examples=[[{"age": 70.0, "heart_rate": 110, "sex": "male"}]],
    )
    parameters: PredictParameters = Field(default_factory=PredictParameters)


class InstancePrediction(BaseModel):
    mean: float | list[float] = Field(
        description="P(positive class) (binary), class probabilities (multiclass) or predicted value"
    )
    variance: float = Field(description="total predictive variance")
    epistemic: float = Field(description="mutual information (classification) or variance of sampled means")
    aleatoric: float
    ood_score: float = Field(description="the epistemic score (the `epistemic` detector's)")
    novelty_score: float | None = Field(
        description="input novelty: shrinkage Mahalanobis distance of the unclipped preprocessed input "
        "from the training inputs (null for a checkpoint without a novelty detector)"
    )
    ood: bool = Field(
        description="true when any detector fires (epistemic score, novelty score, implausible value); "
        "thresholds calibrated jointly to the checkpoint's false-alarm rate (calibration.ood_alpha)"
    )
    ood_reasons: list[Literal["epistemic", "novelty", "implausible"]] = Field(
        description="the detectors that fired, in this order (empty when ood is false)"
    )
    prediction_id: str = Field(
        description="unique and unguessable (128 random bits, hex); send it back with the outcome to "
        "POST /v1/models/{name}/feedback"
    )
    imputed: list[str] = Field(description="features that were missing and imputed")
    flagged: list[str] = Field(description="features outside their plausible range (likely unit errors)")
    interval: list[float] | None = Field(
        default=None,
        description="regression: central 90 % split-conformal interval, mean ± q̂·sd (finite-sample "
        "marginal coverage under exchangeability; calibration.conformal)",
    )
    prediction_set: list[str] | None = Field(
        default=None,
        description="classification: the labels of the 90 % conformal prediction set (calibration."
        "conformal); two labels: the model cannot decide at this level (refer)",
    )


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    samples: int
    predictions: list[InstancePrediction]

    model_config = ConfigDict(protected_namespaces=())


class ErrorResponse(BaseModel):
    error: str
    field: str | None = None


class FeatureInfo(BaseModel):
    name: str
    unit: str
    kind: str
    categories: list[str] | None = None
    plausible_low: float | None = None
    plausible_high: float | None = None
    imputed_with: float | str | None = None
    #: how FHIR clients send it: codes (LOINC or local), canonical UCUM unit, molar mass, Patient field
    coding: FeatureCoding | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    versions: list[str]
    task: str
    method: str
    rank: int | None
    parameter_count: int
    sampling_mode: str
    default_samples: int
    ood_score: str
    ood_threshold: float = Field(description="the epistemic score's threshold (jointly calibrated)")
    ood_alpha: float = Field(description="the combined OOD decision's stated false-alarm rate")
    novelty_threshold: float | None = Field(description="the novelty score's threshold (null: no detector)")
    conformal: dict[str, Any] | None = Field(
        description="the conformal calibration: level, score, quantile q̂ and calibration size n"
    )
    sha256: str
    device: str
    output: dict[str, Any]
    input: dict[str, Any] = Field(
        description="input kind (tabular | sequence | text) and its facts: an instance is named features "
        '(tabular), {"hours": [24 hourly feature objects, oldest first]} (sequence) or {"text": "..."} (text)'
    )
    features: list[FeatureInfo] = Field(description="named raw features (tabular; per hour for sequence)")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    failed: dict[str, str] = Field(default_factory=dict, description="models that could not be loaded")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",  # the manifest's pattern: no path tricks
        description="default: the newest version directory",
    )


class ReloadResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    previous_version: str | None
    sha256: str


MAX_LABEL_CHARS = 200


def _scalar(value: Any) -> Any:
    """One error naming ``value`` itself (not a member of the union) for anything but a JSON scalar."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= MAX_LABEL_CHARS):
        return value
    raise ValueError(
        f"must be a number, a label (a string of at most {MAX_LABEL_CHARS} characters) or a boolean"
    )


OutcomeValue = Annotated[
    StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=MAX_LABEL_CHARS)],
    BeforeValidator(_scalar),
]


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(min_length=1, max_length=64, description="as answered with the prediction")
    value: OutcomeValue = Field(
        description="regression: the observed value (a number); classification: a label of the model or "
        "its class index (binary: also true = the positive label). A value of the right JSON type but "
        "wrong for the model (an unknown label, an index out of range) is answered as `invalid`"
    )


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcomes: list[Outcome] = Field(min_length=1, description="at most LRBNN_MAX_INSTANCES per request")


class InvalidOutcome(BaseModel):
    prediction_id: str
    error: str


class FeedbackResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    accepted: list[str] = Field(description="stored and committed (durable) before this answer")
    unknown: list[str] = Field(description="no stored prediction of this model has the id")
    duplicate: list[str] = Field(description="the prediction has an outcome already; the first one stands")
    invalid: list[InvalidOutcome] = Field(description="a value of the wrong type for the model's task")


# -- V2 (Open Inference Protocol) and probes: documentation of the wire format ------------------------
# The V2 handlers parse raw bytes (tritonclient sends no Content-Type) and check every field by hand;
# these models document exactly what they accept, so the OpenAPI document is the real contract there too.
V2Number = float | int | None


class V2TensorInput(BaseModel):
    """Any model's input tensor; each served model's own, exact schema is ``<model>.V2Input``."""

    name: Literal["features", "window", "text", "input__0"] = Field(
        description="features (tabular), window (sequence) or text (text); input__0 for any of them"
    )
    datatype: Literal["FP32", "FP64", "BYTES"] = Field(description="FP32 or FP64 (numeric), BYTES (text)")
    shape: list[Annotated[JsonInt, Field(ge=1)]] = Field(
        min_length=1,
        max_length=3,
        description="[N, F] (tabular), [N, 24, F] (sequence) or [N] (text); N = 1..LRBNN_MAX_INSTANCES",
    )
    data: list[V2Number | str | list[Any]] | None = Field(
        default=None, description="row-major values (flat or one list per row); null = missing (imputed)"
    )
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size` when the tensor follows the JSON header as raw bytes"
    )


class V2RequestedOutput(BaseModel):
    name: Literal[
        "mean", "variance", "epistemic", "aleatoric", "ood_score", "novelty_score", "ood", "prediction_id"
    ]
    parameters: dict[str, Any] | None = Field(default=None, description="`binary_data`: bool")


class V2InferParameters(BaseModel):
    samples: JsonInt | None = Field(default=None, description="Monte Carlo samples S (1..LRBNN_MAX_SAMPLES)")
    seed: JsonInt | None = Field(default=None, description="0..2**63-1")
    binary_data_output: Any = Field(default=None, description="bool: every output as raw bytes")


class V2InferRequest(BaseModel):
    id: str | None = None
    inputs: list[V2TensorInput] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] | None = None
    parameters: V2InferParameters | None = None


class V2TensorOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | bool | str] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any]
    outputs: list[V2TensorOutput]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any]


class V2ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class Liveness(BaseModel):
    status: Literal["alive"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "no models", "draining"]
    models: dict[str, str] | None = Field(default=None, description="when ready: model -> version")
    errors: dict[str, str] | None = Field(default=None, description="when not ready: model -> load error")
