"""Pydantic models of the V1 wire format, so the OpenAPI document is the real contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

FeatureValue = float | int | bool | str | None


class PredictParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: StrictInt | None = Field(
        default=None, description="Monte Carlo samples S (1..LRBNN_MAX_SAMPLES); default from the manifest"
    )
    seed: StrictInt | None = Field(
        default=None, description="0..2**63-1; the same request and seed always give the same answer"
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[dict[str, Any]] = Field(
        description="one object per patient: feature name -> raw value in the schema's unit; null or "
        "absent = not measured (imputed and listed in `imputed`)",
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
    ood_score: float
    ood: bool = Field(description="ood_score > the checkpoint's calibrated threshold")
    imputed: list[str] = Field(description="features that were missing and imputed")
    flagged: list[str] = Field(description="features outside their plausible range (likely unit errors)")
    interval: list[float] | None = Field(default=None, description="regression: central 90 % interval")


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
    ood_threshold: float
    sha256: str
    device: str
    output: dict[str, Any]
    features: list[FeatureInfo]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    failed: dict[str, str] = Field(default_factory=dict, description="models that could not be loaded")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, description="default: the newest version directory")


class ReloadResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    previous_version: str | None
    sha256: str
