"""Clinical codes and canonical units of a model's input features (what FHIR clients send).

A clinical client does not send ``{"crea": 1.2}``; it holds a LOINC-coded Observation in whatever unit
its lab reports (``mg/dL`` or ``umol/L``). :class:`FeatureCoding`, stored on each feature of the
manifest, says which codes carry the feature, its canonical UCUM unit (the unit the model was trained
in) and, for analytes reported by mass or by amount of substance, the molar mass that links the two.
Features with no Observation code come from the Patient resource (:class:`PatientField`) or from a
local code system (:data:`LOCAL_SYSTEM`), documented per feature in ``docs/service.md``.

Data only: no unit library is imported here (the server converts units, see ``service/fhir/units``).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
#: the code system of features that have no standard code (SUPPORT2's own scores and counts)
LOCAL_SYSTEM = "https://lrbnn.dev/fhir/CodeSystem/feature"


class PatientField(str, Enum):
    """A feature read from the Patient resource instead of an Observation."""

    #: age in years at the time of the patient's latest Observation (else the Bundle's timestamp)
    AGE = "birthDate"
    #: ``Patient.gender`` (``female``/``male``; ``other``/``unknown`` count as not recorded)
    GENDER = "gender"
    #: the US Core race extension's OMB category, with the US Core ethnicity extension's Hispanic or Latino
    RACE = "race"


class Code(BaseModel):
    """One code that identifies the feature (a Coding without version)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str
    code: str
    display: str = ""


class FeatureCoding(BaseModel):
    """How a feature is found in FHIR resources and which unit its values are in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Observation codes that carry the feature (any matches; the first is the canonical one)
    codes: list[Code] = Field(default_factory=list)
    #: the canonical UCUM unit (the unit the model was trained in); None for categorical features
    ucum: str | None = None
    #: g/mol: converts an amount-of-substance concentration (mmol/L) to a mass one (mg/dL) and back
    molar_mass: float | None = Field(default=None, gt=0)
    #: the feature comes from the Patient resource, not from an Observation
    patient: PatientField | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FeatureCoding:
        """A feature must be findable: by code, or from the Patient, never both or neither."""
        if bool(self.codes) == (self.patient is not None):
            raise ValueError("a feature coding needs Observation codes or a Patient field (exactly one)")
        return self


def loinc(code: str, display: str) -> Code:
    return Code(system=LOINC, code=code, display=display)


def local(code: str, display: str) -> Code:
    return Code(system=LOCAL_SYSTEM, code=code, display=display)
