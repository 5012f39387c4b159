"""``POST /v1/models/{name}:predict-fhir`` on the bundled ICU model, in process over the real app.

Units are converted by ucumvert + pint; the tests state each expected value from physics (°F to °C,
µmol/L to mg/dL by the molar mass), never from the code under test.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.riskassessment import RiskAssessment
from fhir_helpers import (
    FEVERISH_V1,
    ICU,
    bundle,
    feverish_patient,
    observation,
    patient,
)
from service_helpers import metric_value

from service.fhir.risk import EXTENSION_BASE
from service.fhir.units import UnitError, convert

pytestmark = pytest.mark.anyio
FHIR = f"/v1/models/{ICU}:predict-fhir"


def _ext(resource: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension", []) if e["url"] == EXTENSION_BASE + name]


def _sub(ext: dict[str, Any], name: str) -> list[Any]:
    return [
        next(v for k, v in s.items() if k.startswith("value")) for s in ext["extension"] if s["url"] == name
    ]


def test_units_convert_by_ucum_not_by_a_table() -> None:
    assert convert(98.6, "[degF]", "Cel") == pytest.approx(37.0, abs=1e-9)
    assert convert(310.15, "K", "Cel") == pytest.approx(37.0, abs=1e-9)
    assert convert(88.42, "umol/L", "mg/dL", 113.12) == pytest.approx(1.0002, abs=1e-4)
    assert convert(5.0, "mmol/L", "mg/dL", 180.16) == pytest.approx(90.08, abs=1e-9)
    assert convert(1500.0, "mL/(24.h)", "mL/d") == pytest.approx(1500.0, abs=1e-9)
    assert convert(12.0, "10*3/uL", "10*9/L") == pytest.approx(12.0, abs=1e-9)
    assert convert(140.0, "meq/L", "mmol/L") == pytest.approx(140.0, abs=1e-9)
    assert convert(3.1, "g/L", "g/dL") == pytest.approx(0.31, abs=1e-12)
    with pytest.raises(UnitError, match="cannot be converted"):
        convert(1.0, "mg", "mg/dL")
    with pytest.raises(UnitError, match="cannot be converted"):
        convert(1.0, "umol/L", "mg/dL")  # without a molar mass, amount and mass do not mix
    with pytest.raises(UnitError, match="not a UCUM unit"):
        convert(1.0, "[degX]", "Cel")


async def test_degf_and_umol_give_the_v1_answer_in_canonical_units(icu_client: httpx.AsyncClient) -> None:
    r = await icu_client.post(FHIR + "?samples=64&seed=3", json=bundle(*feverish_patient()))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    answer = r.json()
    Bundle.model_validate(answer)  # the whole answer is valid FHIR
    risk = answer["entry"][0]["resource"]
    RiskAssessment.model_validate(risk)
    v1 = await icu_client.post(
        f"/v1/models/{ICU}:predict",
        json={"instances": [FEVERISH_V1], "parameters": {"samples": 64, "seed": 3}},
    )
    expected = v1.json()["predictions"][0]
    # the same float32 model input: equal to the printed precision (1e-9 covers the 10-digit rounding)
    assert risk["prediction"][0]["probabilityDecimal"] == pytest.approx(expected["mean"], abs=1e-9)
    assert risk["prediction"][0]["outcome"]["text"] == "died"
    assert risk["subject"] == {"reference": "Patient/p1"}
    assert [b["reference"] for b in risk["basis"]] == [
        "Observation/p1-t",
        "Observation/p1-c",
        "Observation/p1-h",
    ]
    (uncertainty,) = _ext(risk, "uncertainty")
    assert _sub(uncertainty, "epistemic") == [pytest.approx(expected["epistemic"], abs=1e-9)]
    assert _sub(uncertainty, "samples") == [64]
    (ood,) = _ext(risk, "ood")
    assert _sub(ood, "flag") == [expected["ood"]]
    assert _sub(ood, "reason") == expected["ood_reasons"]
    (pid,) = _ext(risk, "prediction-id")
    assert risk["identifier"][0]["value"] == pid["valueString"] == risk["id"]
    assert sorted(e["valueString"] for e in _ext(risk, "imputed")) == sorted(expected["imputed"])
    (pset,) = _ext(risk, "prediction-set")
    assert _sub(pset, "label") == expected["prediction_set"]


async def test_the_latest_observation_per_code_wins(icu_client: httpx.AsyncClient) -> None:
    later = observation("t-late", "p1", "8310-5", 39.0, "Cel", when="2024-03-02T08:00:00Z")
    earlier = observation("t-early", "p1", "8310-5", 36.0, "Cel", when="2024-03-01T08:00:00Z")
    body = bundle(patient("p1"), later, earlier)
    risk = (await icu_client.post(FHIR + "?seed=1", json=body)).json()["entry"][0]["resource"]
    assert [b["reference"] for b in risk["basis"]] == ["Observation/t-late"]
    v1 = await icu_client.post(
        f"/v1/models/{ICU}:predict",
        # age at the latest observation: 74 years and 1 day of the 365 to the 75th birthday
        json={"instances": [{"age": 74 + 1 / 365, "sex": "female", "temp": 39.0}], "parameters": {"seed": 1}},
    )
    assert risk["prediction"][0]["probabilityDecimal"] == pytest.approx(
        v1.json()["predictions"][0]["mean"], abs=1e-9
    )


async def test_a_unit_that_cannot_be_converted_is_a_422_naming_resource_and_field(
    icu_client: httpx.AsyncClient,
) -> None:
    entries = feverish_patient()
    entries[2]["resource"]["valueQuantity"].update(code="mg", unit="mg")
    r = await icu_client.post(FHIR, json=bundle(*entries))
    assert r.status_code == 422
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Observation/p1-c.valueQuantity.code"]
    assert "'mg' cannot be converted to 'mg/dL'" in outcome["issue"][0]["diagnostics"]
    assert outcome["field"] == "Observation/p1-c.valueQuantity.code"
    entries[2]["resource"]["valueQuantity"].update(code="mg/dL", system="http://example.org/units")
    r = await icu_client.post(FHIR, json=bundle(*entries))
    assert r.status_code == 422 and r.json()["field"] == "Observation/p1-c.valueQuantity.system"
    no_unit = observation("t0", "p1", "8310-5", 37.0, None)
    r = await icu_client.post(FHIR, json=bundle(patient("p1"), no_unit))
    assert r.status_code == 422 and r.json()["field"] == "Observation/t0.valueQuantity.code"


async def test_unknown_codes_and_void_or_orphan_observations_are_listed_as_ignored(
    icu_client: httpx.AsyncClient,
) -> None:
    unknown = observation("x1", "p1", "2093-3", 190, "mg/dL")  # cholesterol: not an input
    void = observation("t9", "p1", "8310-5", 20.0, "Cel", status="entered-in-error")
    orphan = observation("o1", "nobody", "8310-5", 37.0, "Cel")
    r = await icu_client.post(FHIR, json=bundle(*feverish_patient(), unknown, void, orphan))
    assert r.status_code == 200, r.text
    answer = r.json()
    risk = answer["entry"][0]["resource"]
    ignored = {_sub(e, "resource")[0]["reference"]: _sub(e, "reason")[0] for e in _ext(risk, "ignored")}
    assert set(ignored) == {"Observation/x1", "Observation/t9"}
    assert "status entered-in-error" in ignored["Observation/t9"]
    assert "Observation/t9" not in [b["reference"] for b in risk["basis"]]
    (stray,) = _ext(answer, "ignored")
    assert _sub(stray, "resource")[0]["reference"] == "Observation/o1"


async def test_invalid_bundles_get_a_precise_answer(icu_client: httpx.AsyncClient) -> None:
    r = await icu_client.post(FHIR, json={"resourceType": "Patient", "id": "x"})
    assert r.status_code == 400 and r.json()["field"] == "resourceType"
    broken = bundle(patient("p1"), observation("t1", "p1", "8310-5", 37.0, "Cel"))
    del broken["entry"][1]["resource"]["code"]
    r = await icu_client.post(FHIR, json=broken)
    assert r.status_code == 422
    assert r.json()["field"] == "entry[1].resource.code"
    r = await icu_client.post(FHIR, json=bundle({"resource": {"resourceType": "NoSuchResource"}}))
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["field"] == "entry[0].resource.resourceType"
    r = await icu_client.post(FHIR, json={"resourceType": "Bundle", "type": "collection", "entry": "x"})
    assert r.status_code == 422 and r.json()["field"] == "entry"
    r = await icu_client.post(FHIR, json=bundle(observation("t1", "p1", "8310-5", 37.0, "Cel")))
    assert r.status_code == 422 and "no Patient" in r.json()["error"]
    r = await icu_client.post(FHIR, content=b"{not json")
    assert r.status_code == 400
    r = await icu_client.post(FHIR + "?samples=many", json=bundle(*feverish_patient()))
    assert r.status_code == 422 and r.json()["field"] == "samples"
    r = await icu_client.post(FHIR + "?samples=0", json=bundle(*feverish_patient()))
    assert r.status_code == 422 and r.json()["field"] == "samples"
    text_model = await icu_client.post(
        "/v1/models/review-sentiment:predict-fhir", json=bundle(*feverish_patient())
    )
    assert text_model.status_code == 422 and "no FHIR feature codings" in text_model.json()["error"]
    assert (await icu_client.post("/v1/models/nope:predict-fhir", json=bundle())).status_code == 404


async def test_a_bundle_of_1000_patients_is_answered_in_order_and_1001_is_refused(
    icu_client: httpx.AsyncClient,
) -> None:
    entries: list[dict[str, Any]] = []
    for i in range(1000):
        entries += feverish_patient(f"p{i}")
    body = bundle(*entries)
    r = await icu_client.post(FHIR + "?samples=8&seed=1", json=body)
    assert r.status_code == 200, r.text[:500]
    risks = [e["resource"] for e in r.json()["entry"]]
    assert [x["subject"]["reference"] for x in risks] == [f"Patient/p{i}" for i in range(1000)]
    assert len({x["id"] for x in risks}) == 1000
    RiskAssessment.model_validate(risks[-1])
    too_many = bundle(*entries, *feverish_patient("p1000"))
    r = await icu_client.post(FHIR, json=too_many)
    assert r.status_code == 413 and r.json()["field"] == "patients"
    metrics = (await icu_client.get("/metrics")).text
    assert metric_value(metrics, "lrbnn_predictions_total", model=ICU) == 1000.0


async def test_us_core_race_and_ethnicity_map_to_the_models_categories(icu_client: httpx.AsyncClient) -> None:
    race = {
        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
        "extension": [
            {
                "url": "ombCategory",
                "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2054-5"},
            }
        ],
    }
    body = bundle(patient("p1", extension=[race]), observation("t1", "p1", "8310-5", 37.0, "Cel"))
    risk = (await icu_client.post(FHIR + "?seed=2", json=body)).json()["entry"][0]["resource"]
    assert "race" not in [e["valueString"] for e in _ext(risk, "imputed")]
    v1 = await icu_client.post(
        f"/v1/models/{ICU}:predict",
        json={
            "instances": [{"age": 74.0, "sex": "female", "race": "black", "temp": 37.0}],
            "parameters": {"seed": 2},
        },
    )
    assert risk["prediction"][0]["probabilityDecimal"] == pytest.approx(
        v1.json()["predictions"][0]["mean"], abs=1e-9
    )


def test_age_counts_completed_years_and_the_fraction_of_the_current_one() -> None:
    from datetime import date

    from service.fhir.bundle import age_years

    assert age_years(date(1950, 3, 1), date(2024, 3, 1)) == 74.0
    assert age_years(date(1950, 3, 1), date(2024, 2, 29)) == pytest.approx(73 + 365 / 366)
    assert age_years(date(1960, 2, 29), date(2021, 3, 1)) == 61.0  # born on 29 February


async def test_a_panel_observation_sets_features_from_its_components(icu_client: httpx.AsyncClient) -> None:
    panel = {
        "resource": {
            "resourceType": "Observation",
            "id": "bp",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},  # BP panel
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-03-01T08:00:00Z",
            "component": [
                {
                    "code": {
                        "coding": [{"system": "http://loinc.org", "code": "8480-6"}]
                    },  # systolic: unused
                    "valueQuantity": {"value": 90, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
                },
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8478-0"}]},  # mean BP
                    "valueQuantity": {"value": 8.0, "system": "http://unitsofmeasure.org", "code": "kPa"},
                },
            ],
        }
    }
    risk = (await icu_client.post(FHIR + "?seed=4", json=bundle(patient("p1"), panel))).json()["entry"][0][
        "resource"
    ]
    assert [b["reference"] for b in risk["basis"]] == ["Observation/bp"]
    v1 = await icu_client.post(
        f"/v1/models/{ICU}:predict",
        # 8 kPa = 8000 Pa / 133.322387415 Pa per mmHg = 60.005 mmHg
        json={
            "instances": [{"age": 74.0, "sex": "female", "meanbp": 8000 / 133.322387415}],
            "parameters": {"seed": 4},
        },
    )
    assert risk["prediction"][0]["probabilityDecimal"] == pytest.approx(
        v1.json()["predictions"][0]["mean"], abs=1e-9
    )
