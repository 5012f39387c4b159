"""FHIR R4 predict: a Bundle of Patients and Observations in, a Bundle of RiskAssessments out.

The mapping is ``service.fhir`` (codes, units, latest-wins, Patient fields); this router only gates the
request (auth, limits, metrics, the same batcher as V1) and answers errors as FHIR clients read them:
an ``OperationOutcome`` whose issue names the resource and field (``expression``), with the V1 error
body's ``error`` and ``field`` beside it so one client can read both kinds of answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.body import parse_json
from service.api.deps import app_state, disconnect_waiter
from service.api.errors import error_headers
from service.errors import InvalidInput, ServiceError
from service.fhir.bundle import FeatureIndex, read_fhir
from service.fhir.risk import risk_assessments
from service.inference import Instances
from service.repository import ServedModel
from service.state import Endpoint, retry_claim

router = APIRouter(tags=["fhir"])
FHIR_JSON = "application/fhir+json"
#: OperationOutcome issue codes by HTTP status (FHIR's IssueType value set)
_ISSUE_CODE = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    413: "too-costly",
    422: "invalid",
}


def fhir_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=FHIR_JSON, headers=headers)


def operation_outcome(exc: ServiceError) -> Response:
    """The error as an ``OperationOutcome`` (plus ``error``/``field`` as in every other answer)."""
    issue: dict[str, Any] = {
        "severity": "error",
        "code": _ISSUE_CODE.get(exc.status, "processing"),
        "diagnostics": exc.message,
    }
    if exc.field:
        issue["expression"] = [exc.field]
    body: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [issue], "error": exc.message}
    if exc.field:
        body["field"] = exc.field
    return fhir_response(body, exc.status, error_headers(exc))


def query_int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be an integer, got {value!r}", name) from None


def feature_index(served: ServedModel, field: str = "name") -> FeatureIndex:
    """The model's codes; a model without any (a text or sequence model) cannot read FHIR (422 on
    ``field``, the path parameter that named it)."""
    index = FeatureIndex(served.inputs.features())
    if not index:
        raise InvalidInput(
            f"model {served.name!r} has no FHIR feature codings (only tabular models with coded features "
            "take FHIR input and CDS Hooks; use :predict)",
            field,
        )
    return index


def _documented(schema: dict[str, Any], description: str, also_json: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {FHIR_JSON: {"schema": schema}}
    if also_json:  # the body limit answers before the route, in the service's plain error body
        content["application/json"] = {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
    return {"description": description, "content": content}


OPERATION_OUTCOME = {
    "type": "object",
    "description": "a FHIR OperationOutcome (issue[0].diagnostics and .expression), with error and field",
    "required": ["resourceType", "issue", "error"],
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {"type": "array", "items": {"type": "object"}},
        "error": {"type": "string"},
        "field": {"type": "string"},
    },
}
#: every answer of the route is FHIR JSON (the 413 of the body limit may also be the plain error body)
FHIR_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _documented({"type": "object", "description": "a Bundle of RiskAssessments"}, "RiskAssessments"),
    **{
        code: _documented(OPERATION_OUTCOME, "an OperationOutcome", also_json=code == 413)
        for code in (400, 401, 403, 404, 413, 422, 429, 503, 504)
    },
}


@router.post(
    "/v1/models/{name}:predict-fhir",
    response_class=Response,
    responses=FHIR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {FHIR_JSON: {"schema": {"type": "object", "description": "a FHIR R4 Bundle"}}},
        }
    },
    summary="Predict from a FHIR R4 Bundle (Patients + LOINC/UCUM Observations) -> RiskAssessments",
)
async def predict_fhir(
    name: str, request: Request, samples: str | None = None, seed: str | None = None
) -> Response:
    state = app_state(request)
    try:
        async with state.track(request, name, Endpoint.V1_PREDICT_FHIR) as served:
            index = feature_index(served)
            n_samples, n_seed = query_int(samples, "samples"), query_int(seed, "seed")
            if n_samples is not None:
                state.inference.resolve_samples(served, n_samples, "samples")
            state.inference.check_seed(n_seed, "seed")
            payload = parse_json(await request.body())
            # validation costs ~0.13 ms per resource: a large Bundle must not stall the event loop
            inputs = await asyncio.to_thread(read_fhir, payload, index)
            state.inference.check_count(len(inputs.patients), "patients")
            request.state.instances = len(inputs.patients)
            result = await state.inference.predict(
                served,
                Instances([p.instance for p in inputs.patients]),
                n_samples,
                n_seed,
                disconnect_waiter(request),
                retry_claim(),
            )
            return fhir_response(risk_assessments(result, inputs))
    except ServiceError as exc:
        return operation_outcome(exc)
