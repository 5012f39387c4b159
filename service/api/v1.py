"""V1: named features in, per-instance predictive summaries out; model listing and hot reload."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from model_core.checkpoint import Task
from service.api.body import parse_json, validate
from service.api.deps import app_state, disconnect_waiter
from service.api.schemas import (
    ErrorResponse,
    FeatureInfo,
    FeedbackRequest,
    FeedbackResponse,
    ModelInfo,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    ReloadRequest,
    ReloadResponse,
)
from service.errors import Forbidden
from service.inference import InferenceResult, Instances
from service.outcomes import feedback as record_feedback
from service.repository import ServedModel
from service.reservations import HEADER as RETRY_HEADER
from service.state import Endpoint, retry_claim

router = APIRouter(tags=["v1"])


#: the headers a refusal carries (``api/errors.error_headers``), documented on its statuses
_RETRY_AFTER = {
    "description": "whole seconds to wait before sending again (>= 1)",
    "schema": {"type": "integer", "minimum": 1},
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": _RETRY_AFTER,
        RETRY_HEADER: {
            "description": f"a retry reservation, when the request sent `{RETRY_HEADER}: request` and the"
            " book had room: send it back in that header after Retry-After to be admitted"
            " (docs/service.md, Retry reservations)",
            "schema": {"type": "string"},
        },
    },
    503: {"Retry-After": _RETRY_AFTER},
}


def errors_for(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can really answer (all ``ErrorResponse``),
    with the headers a 429 or 503 carries."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorResponse}
        if code in _ERROR_HEADERS:
            out[code]["headers"] = _ERROR_HEADERS[code]
    return out


#: every status a model request can meet: bad input, auth, unknown model, size, queue, drain, timeout
ERRORS = errors_for(400, 401, 403, 404, 413, 422, 429, 503, 504)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _predictions(result: InferenceResult) -> list[dict[str, Any]]:
    out = result.outputs
    regression = result.served.manifest.task is Task.REGRESSION
    cols = {k: v.tolist() for k, v in out.items()}
    ood = result.ood.tolist()
    novelty = cols.get("novelty_score")
    sets = result.prediction_sets
    preds = []
    for i in range(len(ood)):
        p: dict[str, Any] = {
            "mean": cols["mean"][i],
            "variance": cols["variance"][i],
            "epistemic": cols["epistemic"][i],
            "aleatoric": cols["aleatoric"][i],
            "ood_score": cols["ood_score"][i],
            "novelty_score": None if novelty is None else novelty[i],
            "ood": ood[i],
            "ood_reasons": result.ood_reasons[i],
            "prediction_id": result.prediction_ids[i],
            "imputed": result.imputed[i],
            "flagged": result.flagged[i],
        }
        if regression and "interval_low" in cols:
            p["interval"] = [cols["interval_low"][i], cols["interval_high"][i]]
        if sets is not None:
            p["prediction_set"] = sets[i]
        preds.append(p)
    return preds


@router.post(
    "/v1/models/{name}:predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    },
    summary="Predict with uncertainty (named features)",
)
async def predict(name: str, request: Request) -> Response:
    state = app_state(request)
    async with state.track(request, name, Endpoint.V1_PREDICT) as served:
        body = validate(PredictRequest, parse_json(await request.body()))
        request.state.instances = len(body.instances)
        result = await state.inference.predict(
            served,
            Instances(body.instances),
            body.parameters.samples,
            body.parameters.seed,
            disconnect_waiter(request),
            retry_claim(),
        )
        return json_response(
            {
                "model_name": served.name,
                "model_version": served.version,
                "samples": result.samples,
                "predictions": _predictions(result),
            }
        )


@router.post(
    "/v1/models/{name}/feedback",
    response_model=FeedbackResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}},
        }
    },
    summary="Report outcomes of earlier predictions (durable once answered; idempotent)",
)
async def feedback(name: str, request: Request) -> Response:
    state = app_state(request)
    async with state.track(request, name, Endpoint.V1_FEEDBACK) as served:
        body = validate(FeedbackRequest, parse_json(await request.body()))
        state.inference.check_count(len(body.outcomes), "outcomes")
        request.state.instances = len(body.outcomes)
        items = [(o.prediction_id, o.value) for o in body.outcomes]
        result = await record_feedback(state.store, served.manifest, served.name, items, state.metrics)
        return json_response(result.payload(served.name))


def model_info(served: ServedModel, versions: list[str]) -> ModelInfo:
    m = served.manifest
    features = []
    for spec in served.inputs.features():
        features.append(
            FeatureInfo(
                name=spec.name,
                unit=spec.unit,
                kind=spec.kind,
                categories=spec.categories,
                plausible_low=spec.plausible_low,
                plausible_high=spec.plausible_high,
                imputed_with=spec.impute,
                coding=spec.coding,
            )
        )
    return ModelInfo(
        name=served.name,
        version=served.version,
        versions=versions,
        task=m.task.value,
        method=m.architecture.method.value,
        rank=m.architecture.rank,
        parameter_count=m.parameter_count,
        sampling_mode=served.sampling_mode.value,
        default_samples=served.default_samples,
        ood_score=m.calibration.ood_score.value,
        ood_threshold=m.calibration.ood_threshold,
        ood_alpha=m.calibration.ood_alpha,
        novelty_threshold=None if m.calibration.novelty is None else m.calibration.novelty.threshold,
        conformal=None if m.calibration.conformal is None else m.calibration.conformal.model_dump(),
        sha256=m.sha256,
        device=served.runtime.device,
        output=m.output_schema.model_dump(exclude_none=True),
        input=served.inputs.description(),
        features=features,
    )


@router.get(
    "/v1/models",
    response_model=ModelsResponse,
    responses=errors_for(401, 403),
    summary="Models and input schemas",
)
async def list_models(request: Request) -> Response:
    state = app_state(request)
    state.authorize(request)
    versions = state.repository.discover()
    infos = [model_info(s, versions.get(s.name, [s.version])) for s in state.repository.models()]
    payload = ModelsResponse(models=infos, failed=dict(state.repository.errors))
    return json_response(payload.model_dump(mode="json"))


@router.post(
    "/v1/models/{name}/reload",
    response_model=ReloadResponse,
    responses=errors_for(400, 401, 403, 404, 409, 413, 422),
    summary="Hot reload (admin token): validate the new version fully, keep the old one on failure",
)
async def reload(name: str, request: Request) -> Response:
    state = app_state(request)
    admin = state.admin_tokens
    if not admin.enabled:
        raise Forbidden("reload is disabled (no LRBNN_ADMIN_TOKEN configured)")
    admin.check(request.headers.get("authorization"), "reload")
    raw = await request.body()
    body = validate(ReloadRequest, parse_json(raw)) if raw.strip() else ReloadRequest()
    previous = state.repository.version_of(name)
    served = await asyncio.to_thread(state.repository.reload, name, body.version)
    state.swap_in(served)
    if state.sync is not None:  # the sibling workers follow within about half a second
        state.sync.publish(served.name, served.version)
    return json_response(
        ReloadResponse(
            model_name=served.name,
            model_version=served.version,
            previous_version=previous,
            sha256=served.manifest.sha256,
        ).model_dump(mode="json")
    )
