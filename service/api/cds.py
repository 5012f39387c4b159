"""CDS Hooks 2.0: discovery, ``patient-view`` cards and card feedback, one service per FHIR-coded model.

The card's indicator follows the risk (``LRBNN_CDS_WARNING_RISK`` / ``LRBNN_CDS_CRITICAL_RISK``) and the
OOD decision: a patient outside the model's experience gets at least a ``warning`` whose summary and
detail say so in plain words and why (``service.fhir.explain``), never a bare score. The card's ``uuid``
is the prediction id, so the feedback endpoint (``accepted`` / ``overridden``, with the coded override
reason) lands beside that prediction in the store: a signal of how the model is received, not an
outcome. This service does not query the EHR's FHIR server: it needs its prefetch (412 without it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from service.api.body import parse_json, validate
from service.api.deps import app_state
from service.api.fhir import feature_index
from service.api.v1 import ERRORS, errors_for, json_response
from service.errors import InvalidInput, PreconditionFailed
from service.fhir.bundle import FeatureIndex, read_fhir
from service.fhir.explain import ood_summary
from service.inference import InferenceResult, Instances
from service.outcomes import card_feedback as record_card_feedback
from service.repository import ServedModel
from service.state import Endpoint, retry_claim

router = APIRouter(tags=["cds-hooks"])
HOOK = "patient-view"
OVERRIDE_SYSTEM = "https://lrbnn.dev/fhir/CodeSystem/cds-override-reason"
OVERRIDE_REASONS = [
    {"code": "clinical-judgement", "system": OVERRIDE_SYSTEM, "display": "My clinical judgement differs"},
    {"code": "data-error", "system": OVERRIDE_SYSTEM, "display": "The patient's data are wrong or stale"},
    {
        "code": "not-applicable",
        "system": OVERRIDE_SYSTEM,
        "display": "The model does not apply to this patient",
    },
]


class CdsRequest(BaseModel):
    """The parts of a CDS Hooks request this service reads (others are allowed and ignored)."""

    model_config = ConfigDict(extra="allow")

    hook: str
    hookInstance: str = Field(min_length=1)
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class CardFeedback(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1, max_length=64)
    outcome: Literal["accepted", "overridden"]
    overrideReason: dict[str, Any] | None = None


class FeedbackRequest(BaseModel):
    feedback: list[CardFeedback] = Field(min_length=1)


def prefetch_templates(served: ServedModel) -> dict[str, str]:
    """The FHIR queries the client runs for us: the Patient and every Observation code the model reads."""
    codes = [
        f"{c.system}|{c.code}"
        for spec in served.inputs.features()
        if spec.coding is not None
        for c in spec.coding.codes
    ]
    return {
        "patient": "Patient/{{context.patientId}}",
        "observations": "Observation?subject={{context.patientId}}&code=" + ",".join(codes),
    }


def describe(served: ServedModel) -> dict[str, Any]:
    target = served.manifest.output_schema.positive_label or served.manifest.output_schema.target or "risk"
    method = served.manifest.architecture.method.value
    return {
        "hook": HOOK,
        "id": served.name,
        "title": f"{served.name}: probability of '{target}', and how far to trust it",
        "description": (
            f"Probability of '{target}' from the patient's latest observations ({method} low-rank Bayesian"
            " network), with how far the model can be trusted for this patient."
        ),
        "prefetch": prefetch_templates(served),
        "usageRequirements": "Needs the prefetch; the service does not query the FHIR server.",
    }


def fhir_models(request: Request) -> list[ServedModel]:
    state = app_state(request)
    return [s for s in state.repository.models() if FeatureIndex(s.inputs.features())]


@router.get("/cds-services", summary="CDS Hooks discovery", responses=errors_for(401, 403))
async def discovery(request: Request) -> Response:
    state = app_state(request)
    state.authorize(request)
    return json_response({"services": [describe(s) for s in fhir_models(request)]})


def _entries(resource: Any, what: str) -> list[dict[str, Any]]:
    if resource is None:
        raise PreconditionFailed(
            f"prefetch.{what} is missing: this service needs its prefetch (it does not query the FHIR "
            "server)",
            f"prefetch.{what}",
        )
    if not isinstance(resource, dict):
        raise InvalidInput(f"prefetch.{what} must be a FHIR resource", f"prefetch.{what}")
    if resource.get("resourceType") != "Bundle":
        return [{"resource": resource}]
    entries = resource.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidInput(f"prefetch.{what}.entry must be a list of entries", f"prefetch.{what}.entry")
    return entries  # each one checked as a Bundle entry by parse_bundle


def indicator(risk: float, ood: bool, warning: float, critical: float) -> str:
    level = "critical" if risk >= critical else "warning" if risk >= warning else "info"
    return "warning" if ood and level == "info" else level


def card(result: InferenceResult, ignored: list[str], warning: float, critical: float) -> dict[str, Any]:
    served = result.served
    schema = served.manifest.output_schema
    target = schema.positive_label or schema.target or "the outcome"
    risk = float(result.outputs["mean"][0])
    ood = bool(result.ood[0])
    reasons, flagged = result.ood_reasons[0], result.flagged[0]
    explanation = ood_summary(reasons, flagged, served.manifest.calibration.ood_alpha)
    if ood:
        summary = f"'{target}' {risk:.0%}: patient outside the model's experience, do not rely on it alone"
    else:
        summary = f"Predicted probability of '{target}': {risk:.0%} ({served.name})"
    lines = [f"**Predicted probability of '{target}': {risk:.0%}.**", explanation]
    if result.prediction_sets is not None:
        labels = result.prediction_sets[0]
        lines.append(
            "The outcome cannot be called either way at the model's coverage level (refer)."
            if len(labels) != 1
            else f"At the model's coverage level the call is **{labels[0]}**."
        )
    if result.imputed[0]:
        lines.append(f"Not recorded, filled in from typical values: {', '.join(result.imputed[0])}.")
    if ignored:
        lines.append(f"Not used (not inputs of this model): {', '.join(ignored)}.")
    return {
        "uuid": result.prediction_ids[0],
        "summary": summary[:140],
        "indicator": indicator(risk, ood, warning, critical),
        "detail": "\n\n".join(lines),
        "source": {"label": f"lrbnn {served.name} version {served.version}"},
        "overrideReasons": OVERRIDE_REASONS,
    }


@router.post(
    "/cds-services/{service_id}", summary="CDS Hooks patient-view", responses={**ERRORS, **errors_for(412)}
)
async def patient_view(service_id: str, request: Request) -> Response:
    state = app_state(request)
    async with state.track(request, service_id, Endpoint.CDS_PATIENT_VIEW) as served:
        index = feature_index(served, "service_id")
        body = validate(CdsRequest, parse_json(await request.body()))
        if body.hook != HOOK:
            raise InvalidInput(f"hook {body.hook!r} is not supported; this service answers {HOOK!r}", "hook")
        patient_id = body.context.get("patientId")
        if not isinstance(patient_id, str) or not patient_id:
            raise InvalidInput("context.patientId is required", "context.patientId")
        prefetch = body.prefetch or {}
        entries = _entries(prefetch.get("patient"), "patient") + _entries(
            prefetch.get("observations"), "observations"
        )
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        inputs = await asyncio.to_thread(read_fhir, bundle, index)
        if len(inputs.patients) != 1 or inputs.patients[0].reference != f"Patient/{patient_id}":
            raise InvalidInput(
                f"prefetch.patient must be Patient/{patient_id} (context.patientId)", "prefetch.patient"
            )
        result = await state.inference.predict(
            served, Instances([inputs.patients[0].instance]), None, None, claim=retry_claim()
        )
        ignored = [x.reference for x in inputs.patients[0].ignored]
        settings = state.settings
        return json_response(
            {"cards": [card(result, ignored, settings.cds_warning_risk, settings.cds_critical_risk)]}
        )


@router.post(
    "/cds-services/{service_id}/feedback",
    summary="CDS Hooks card feedback (accepted / overridden), stored beside the prediction",
    responses=errors_for(400, 401, 403, 404, 413, 422, 503),
)
async def card_feedback(service_id: str, request: Request) -> Response:
    state = app_state(request)
    async with state.track(request, service_id, Endpoint.CDS_FEEDBACK) as served:
        body = validate(FeedbackRequest, parse_json(await request.body()))
        state.inference.check_count(len(body.feedback), "feedback")
        items: dict[str, tuple[str, str | None]] = {}
        for f in body.feedback:
            reason = (f.overrideReason or {}).get("reason") or {}
            code = (
                f"{reason.get('system', '')}|{reason.get('code', '')}"[:200] if reason.get("code") else None
            )
            items.setdefault(f.card, (f.outcome, code))
        result = await record_card_feedback(state.store, served.name, items, state.metrics)
        return json_response(result.payload(served.name))
