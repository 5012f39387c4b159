"""FHIR resources for the tests, written by hand as a clinical client sends them (not from the data set)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ICU = "icu-mortality"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"


def icu_repository(target: Path, with_sentiment: bool = False) -> Path:
    """A model repository holding the bundled ICU model (FHIR-coded), and optionally the text model."""
    for name in [ICU] + (["review-sentiment"] if with_sentiment else []):
        shutil.copytree(ROOT / "deploy" / "models" / name, target / name)
    return target


def patient(pid: str, birth: str = "1950-03-01", gender: str = "female", **extra: Any) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{pid}",
        "resource": {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender, **extra},
    }


def observation(
    oid: str,
    pid: str,
    code: str,
    value: float,
    unit: str | None,
    when: str = "2024-03-01T08:00:00Z",
    system: str = LOINC,
    status: str = "final",
) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity.update(unit=unit, system=UCUM, code=unit)
    return {
        "resource": {
            "resourceType": "Observation",
            "id": oid,
            "status": status,
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": when,
            "valueQuantity": quantity,
        }
    }


def bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


def feverish_patient(pid: str = "p1") -> list[dict[str, Any]]:
    """A 74-year-old with temperature in °F and creatinine in µmol/L (an SI lab), and heart rate."""
    return [
        patient(pid),
        observation(f"{pid}-t", pid, "8310-5", 101.3, "[degF]"),
        observation(f"{pid}-c", pid, "14682-9", 176.8, "umol/L"),
        observation(f"{pid}-h", pid, "8867-4", 110, "/min"),
    ]


#: the same patient as V1 sends it, in the model's canonical units (°C; mg/dL with creatinine's molar
#: mass 113.12 g/mol: 176.8 µmol/L x 113.12 g/mol = 20.0 mg/L = 2.000 mg/dL)
FEVERISH_V1 = {
    "age": 74.0,
    "sex": "female",
    "temp": (101.3 - 32.0) * 5.0 / 9.0,
    "crea": 176.8 * 113.12 / 1e4,
    "hrt": 110.0,
}
