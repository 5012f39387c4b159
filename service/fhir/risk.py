"""One FHIR ``RiskAssessment`` per patient, in a ``collection`` Bundle.

``prediction[].probabilityDecimal`` is the predictive mean (the positive label's probability for a
binary model, one prediction per label for a multiclass one); everything else the V1 answer carries
goes in extensions under :data:`EXTENSION_BASE` (documented in ``docs/service.md``): the prediction id
(also the ``identifier``), the uncertainty, the OOD decision with its reasons and a plain-words
explanation (also a ``note``), the conformal prediction set, imputed, flagged and ignored inputs.
``basis`` references the Observations used, ``subject`` the Patient. Built as plain dicts (the tests
validate them with ``fhir.resources``): validating a thousand resources per answer would cost ~0.1 s.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from model_core.checkpoint import Task
from service.fhir.bundle import BundleInput, Ignored
from service.fhir.explain import ood_summary
from service.inference import InferenceResult

EXTENSION_BASE = "https://lrbnn.dev/fhir/StructureDefinition/"
PREDICTION_ID_SYSTEM = "https://lrbnn.dev/fhir/prediction-id"


def _ext(name: str, **value: Any) -> dict[str, Any]:
    return {"url": EXTENSION_BASE + name, **value}


def _sub(name: str, **value: Any) -> dict[str, Any]:
    return {"url": name, **value}


def _decimal(x: float) -> float:
    return float(round(x, 10))


def risk_assessments(result: InferenceResult, inputs: BundleInput) -> dict[str, Any]:
    """The answer Bundle: one RiskAssessment per patient of ``inputs``, in the same order."""
    served = result.served
    manifest = served.manifest
    labels = manifest.output_schema.labels or []
    positive = manifest.output_schema.positive_label or (labels[-1] if labels else "")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cols = {k: v.tolist() for k, v in result.outputs.items()}
    method = (
        f"lrbnn {served.name} version {served.version}: {manifest.architecture.method.value} "
        f"(rank {manifest.architecture.rank}), {result.samples} weight samples"
    )
    entries = []
    for i, patient in enumerate(inputs.patients):
        mean = cols["mean"][i]
        if manifest.task is Task.MULTICLASS:
            predictions = [
                {"outcome": {"text": label}, "probabilityDecimal": _decimal(p)}
                for label, p in zip(labels, mean, strict=True)
            ]
        else:
            predictions = [{"outcome": {"text": positive}, "probabilityDecimal": _decimal(mean)}]
        reasons = result.ood_reasons[i]
        flagged = result.flagged[i]
        summary = ood_summary(reasons, flagged, manifest.calibration.ood_alpha)
        ood: list[dict[str, Any]] = [
            _sub("flag", valueBoolean=bool(result.ood[i])),
            _sub("score", valueDecimal=_decimal(cols["ood_score"][i])),
        ]
        if cols.get("novelty_score") is not None:
            ood.append(_sub("novelty", valueDecimal=_decimal(cols["novelty_score"][i])))
        ood += [_sub("reason", valueCode=r) for r in reasons]
        ood.append(_sub("explanation", valueString=summary))
        extensions = [
            _ext("prediction-id", valueString=result.prediction_ids[i]),
            _ext(
                "uncertainty",
                extension=[
                    _sub("variance", valueDecimal=_decimal(_scalar(cols["variance"][i]))),
                    _sub("epistemic", valueDecimal=_decimal(cols["epistemic"][i])),
                    _sub("aleatoric", valueDecimal=_decimal(_scalar(cols["aleatoric"][i]))),
                    _sub("samples", valueInteger=result.samples),
                ],
            ),
            _ext("ood", extension=ood),
        ]
        if result.prediction_sets is not None:
            extensions.append(
                _ext(
                    "prediction-set",
                    extension=[_sub("label", valueString=x) for x in result.prediction_sets[i]],
                )
            )
        extensions += [_ext("imputed", valueString=name) for name in result.imputed[i]]
        extensions += [_ext("flagged", valueString=name) for name in flagged]
        extensions += [_ignored(x) for x in patient.ignored]
        # the fields a reader looks for first (the extensions carry the rest): FHIR's key order is free
        resource: dict[str, Any] = {
            "resourceType": "RiskAssessment",
            "id": result.prediction_ids[i],
            "status": "final",
            "subject": {"reference": patient.reference},
            "prediction": predictions,
            "note": [{"text": summary}],
        }
        if patient.basis:
            resource["basis"] = [{"reference": ref} for ref in patient.basis]
        resource["occurrenceDateTime"] = now
        resource["method"] = {"text": method}
        resource["identifier"] = [{"system": PREDICTION_ID_SYSTEM, "value": result.prediction_ids[i]}]
        resource["extension"] = extensions
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": now,
        "entry": entries,
    }
    if inputs.ignored:
        bundle["extension"] = [_ignored(x) for x in inputs.ignored]
    return bundle


def _scalar(x: Any) -> float:
    """Multiclass variances are per class: the RiskAssessment carries their sum (total variance)."""
    return float(sum(x)) if isinstance(x, list) else float(x)


def _ignored(item: Ignored) -> dict[str, Any]:
    return _ext(
        "ignored",
        extension=[
            _sub("resource", valueReference={"reference": item.reference}),
            _sub("reason", valueString=item.reason),
        ],
    )
