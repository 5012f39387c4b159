"""CDS Hooks 2.0 on the bundled ICU model: discovery, patient-view cards, card feedback into the store."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fhir_helpers import ICU, feverish_patient, observation, patient
from service_helpers import metric_value

pytestmark = pytest.mark.anyio
SERVICE = f"/cds-services/{ICU}"


def hook_request(entries: list[dict[str, Any]], pid: str = "p1") -> dict[str, Any]:
    resources = [e["resource"] for e in entries]
    obs = [{"resource": r} for r in resources if r["resourceType"] == "Observation"]
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": pid},
        "prefetch": {
            "patient": next(r for r in resources if r["resourceType"] == "Patient"),
            "observations": {"resourceType": "Bundle", "type": "searchset", "entry": obs},
        },
    }


async def test_discovery_offers_one_service_per_fhir_coded_model(icu_client: httpx.AsyncClient) -> None:
    r = await icu_client.get("/cds-services")
    assert r.status_code == 200
    services = r.json()["services"]
    assert [s["id"] for s in services] == [ICU]  # the text model takes no FHIR
    (svc,) = services
    assert svc["hook"] == "patient-view" and svc["title"] and svc["description"]
    assert svc["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|8310-5" in svc["prefetch"]["observations"]
    assert "http://loinc.org|14682-9" in svc["prefetch"]["observations"]


async def test_patient_view_answers_a_valid_card(icu_client: httpx.AsyncClient) -> None:
    r = await icu_client.post(SERVICE, json=hook_request(feverish_patient()))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert len(card["summary"]) <= 140 and "%" in card["summary"]
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"].startswith(f"lrbnn {ICU}")
    assert len(card["uuid"]) == 32
    assert {o["code"] for o in card["overrideReasons"]} >= {"data-error", "clinical-judgement"}
    assert "Not recorded, filled in" in card["detail"]


async def test_an_ood_patient_is_told_in_plain_words_and_never_an_info_card(
    icu_client: httpx.AsyncClient,
) -> None:
    # 30 °F: a unit error a chart can hold (°F sent as °C would read 86 °C); implausible, hence OOD
    entries = [patient("p1"), observation("t1", "p1", "8310-5", 60.0, "Cel")]
    (card,) = (await icu_client.post(SERVICE, json=hook_request(entries))).json()["cards"]
    assert card["indicator"] in ("warning", "critical")
    assert "outside the model's experience" in card["summary"]
    assert "unit or data-entry error: temp" in card["detail"]


async def test_missing_prefetch_wrong_hook_and_wrong_patient_are_refused(
    icu_client: httpx.AsyncClient,
) -> None:
    body = hook_request(feverish_patient())
    r = await icu_client.post(SERVICE, json={**body, "prefetch": None})
    assert r.status_code == 412 and r.json()["field"] == "prefetch.patient"
    r = await icu_client.post(SERVICE, json={**body, "hook": "order-select"})
    assert r.status_code == 422 and r.json()["field"] == "hook"
    r = await icu_client.post(SERVICE, json={**body, "context": {"patientId": "someone-else"}})
    assert r.status_code == 422 and r.json()["field"] == "prefetch.patient"
    r = await icu_client.post(SERVICE, json={"hook": "patient-view"})
    assert r.status_code == 422
    assert (await icu_client.post("/cds-services/review-sentiment", json=body)).status_code == 422
    assert (await icu_client.post("/cds-services/nope", json=body)).status_code == 404


async def test_card_feedback_is_stored_once_beside_its_prediction(icu_client: httpx.AsyncClient) -> None:
    (card,) = (await icu_client.post(SERVICE, json=hook_request(feverish_patient()))).json()["cards"]
    reason = {
        "reason": {"system": "https://lrbnn.dev/fhir/CodeSystem/cds-override-reason", "code": "data-error"}
    }
    fb = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": reason,
                "outcomeTimestamp": "2026-12-07T01:00:00Z",
            },
            {"card": "0" * 32, "outcome": "accepted"},
        ]
    }
    r = await icu_client.post(SERVICE + "/feedback", json=fb)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == [card["uuid"]] and r.json()["unknown"] == ["0" * 32]
    again = await icu_client.post(
        SERVICE + "/feedback", json={"feedback": [{"card": card["uuid"], "outcome": "accepted"}]}
    )
    assert again.json()["duplicate"] == [card["uuid"]]
    bad = await icu_client.post(
        SERVICE + "/feedback", json={"feedback": [{"card": card["uuid"], "outcome": "maybe"}]}
    )
    assert bad.status_code == 422
    metrics = (await icu_client.get("/metrics")).text
    assert metric_value(metrics, "lrbnn_card_feedback_total", model=ICU, outcome="overridden") == 1.0
    assert metric_value(metrics, "lrbnn_card_feedback_total", model=ICU, outcome="accepted") == 0.0


async def test_a_prefetch_bundle_whose_entry_is_not_a_list_is_refused(icu_client: httpx.AsyncClient) -> None:
    body = hook_request(feverish_patient())
    body["prefetch"]["observations"]["entry"] = "x"
    r = await icu_client.post(SERVICE, json=body)
    assert r.status_code == 422 and r.json()["field"] == "prefetch.observations.entry"
