"""A FHIR R4 Bundle (Patients and their Observations) into one V1 instance per patient.

Parsing and validation are ``fhir.resources`` (its R4B models: R4B is the R4 maintenance release, and
Bundle, Patient, Observation and RiskAssessment are the same on the wire). The mapping rules, in order:

* every Patient of the Bundle is one instance, in Bundle order; Observations join their patient by
  ``subject.reference`` (``Patient/{id}`` or the Patient entry's ``fullUrl``);
* an Observation (or one of its ``component`` s) whose code is one of a feature's codes sets that
  feature; several for one feature: **the latest wins** (``effectiveDateTime`` / ``effectiveInstant``
  / ``effectivePeriod.end``, else ``issued``; undated ones rank below dated ones, ties go to the later
  entry in the Bundle);
* a quantity's unit is its UCUM ``code`` (else its ``unit`` text read as UCUM), converted to the feature's
  canonical unit (``service.fhir.units``); a unit that cannot be converted is a 422 naming the resource
  and field, never a silent guess;
* Observations with a code no feature uses, without a patient of this Bundle, or with status
  ``entered-in-error``/``cancelled`` are listed as ignored (with why), never an error;
* age comes from ``Patient.birthDate`` at the time of the patient's latest Observation (else the
  Bundle's ``timestamp``, else now); sex from ``Patient.gender``; race from the US Core race and
  ethnicity extensions. A feature nothing sets is absent, so it is imputed and listed as in V1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from model_core.data.coding import UCUM, FeatureCoding, PatientField
from model_core.data.features import FeatureSpec
from service.errors import BadRequest, InvalidInput
from service.fhir.units import UnitError, convert

#: Observation statuses that mean "this value is not a measurement"
VOID_STATUSES = frozenset({"entered-in-error", "cancelled"})
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
#: OMB race categories (US Core) -> SUPPORT2's race categories; OMB categories SUPPORT2 lacks are "other"
OMB_RACE = {"2106-3": "white", "2054-5": "black", "2028-9": "asian", "1002-5": "other", "2076-8": "other"}
#: OMB ethnicity "Hispanic or Latino": SUPPORT2 records it as a race category, and it takes precedence
OMB_HISPANIC = "2135-2"
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


@dataclass
class Ignored:
    """An Observation that set no feature, and why (answered, so the client can fix its mapping)."""

    reference: str
    reason: str


@dataclass
class _Value:
    value: float | str
    when: datetime | None
    order: int
    reference: str

    def newer_than(self, other: _Value) -> bool:
        mine, theirs = self.when or _EPOCH, other.when or _EPOCH
        return (mine, self.order) > (theirs, other.order)


@dataclass
class PatientInput:
    """One patient's instance (feature -> canonical value) and the resources it rests on."""

    reference: str
    instance: dict[str, Any] = field(default_factory=dict)
    basis: list[str] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


@dataclass
class BundleInput:
    patients: list[PatientInput]
    #: Observations that joined no patient of the Bundle
    ignored: list[Ignored]


def parse_bundle(payload: Any) -> Any:
    """Validate ``payload`` as a FHIR R4 Bundle; 400 when it is not a Bundle, 422 naming the first
    invalid element otherwise."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    if not isinstance(payload, dict) or payload.get("resourceType") != "Bundle":
        raise BadRequest("the body must be a FHIR Bundle (resourceType 'Bundle')", "resourceType")
    entries = payload.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidInput("Bundle.entry must be a list of entries", "entry")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(kind, str):
            raise InvalidInput(
                f"Bundle.entry[{i}]: needs a resource with a resourceType", f"entry[{i}].resource"
            )
        try:
            get_fhir_model_class(kind)
        except ValueError:
            raise InvalidInput(
                f"Bundle.entry[{i}].resource: {kind!r} is not a FHIR R4 resource type",
                f"entry[{i}].resource.resourceType",
            ) from None
    try:
        return Bundle.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _location(first.get("loc", ()))
        raise InvalidInput(f"invalid Bundle: {where}: {first.get('msg')}", where) from None
    except (KeyError, TypeError, ValueError) as exc:  # fhir.resources: an unknown resourceType
        raise InvalidInput(f"invalid Bundle: {exc}", "entry") from None


def read_fhir(payload: Any, index: FeatureIndex) -> BundleInput:
    """:func:`parse_bundle` then :func:`read_bundle`: the whole FHIR side of a request, off the event
    loop in the routes (validation costs ~0.13 ms per resource)."""
    return read_bundle(parse_bundle(payload), index)


def _location(loc: Iterable[Any]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int) and parts:
            parts[-1] += f"[{p}]"
        else:
            parts.append(str(p))
    return ".".join(parts) or "Bundle"


def _reference(resource: Any) -> str:
    return f"{resource.get_resource_type()}/{resource.id}" if resource.id else resource.get_resource_type()


def _when(obs: Any) -> datetime | None:
    value = obs.effectiveDateTime or obs.effectiveInstant
    if value is None and obs.effectivePeriod is not None:
        value = obs.effectivePeriod.end or obs.effectivePeriod.start
    if value is None:
        value = obs.issued
    return _as_datetime(value)


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str) and value[:4].isdigit():  # FHIR partial dates: "2024" or "2024-05"
        year, month, day = ([int(p) for p in value.split("-")[:3]] + [1, 1])[:3]
        return datetime(year, month, day, tzinfo=timezone.utc)
    return None


class FeatureIndex:
    """(system, code) -> feature, and the Patient-derived features, of one model's preprocessing."""

    def __init__(self, specs: Iterable[FeatureSpec]) -> None:
        self.by_code: dict[tuple[str, str], FeatureSpec] = {}
        self.patient: dict[PatientField, FeatureSpec] = {}
        for spec in specs:
            coding = spec.coding
            if coding is None:
                continue
            if coding.patient is not None:
                self.patient[coding.patient] = spec
            for code in coding.codes:
                self.by_code[(code.system, code.code)] = spec

    def __bool__(self) -> bool:
        return bool(self.by_code or self.patient)

    def match(self, concept: Any) -> FeatureSpec | None:
        for coding in (concept.coding or ()) if concept is not None else ():
            spec = self.by_code.get((coding.system or "", coding.code or ""))
            if spec is not None:
                return spec
        return None


def read_bundle(bundle: Any, index: FeatureIndex, now: datetime | None = None) -> BundleInput:
    """Map a validated Bundle to one :class:`PatientInput` per Patient (rules: the module docstring)."""
    patients: dict[str, PatientInput] = {}
    resources: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    observations: list[tuple[int, str, Any]] = []
    for i, entry in enumerate(bundle.entry or ()):
        resource = entry.resource
        kind = resource.get_resource_type()
        if kind == "Patient":
            ref = _reference(resource)
            if ref in patients:
                raise InvalidInput(f"Bundle.entry[{i}]: {ref} appears twice", f"entry[{i}].resource.id")
            patients[ref] = PatientInput(ref)
            resources[ref] = resource
            aliases[ref] = ref
            if entry.fullUrl:
                aliases[entry.fullUrl] = ref
        elif kind == "Observation":
            observations.append((i, _reference(resource), resource))
    if not patients:
        raise InvalidInput("the Bundle holds no Patient resource", "entry")
    stray: list[Ignored] = []
    latest: dict[str, dict[str, _Value]] = {ref: {} for ref in patients}
    for i, ref, obs in observations:
        subject = obs.subject.reference if obs.subject is not None else None
        owner = aliases.get(subject or "")
        if owner is None:
            stray.append(Ignored(ref, f"its subject {subject!r} is not a Patient of this Bundle"))
            continue
        if obs.status in VOID_STATUSES:
            patients[owner].ignored.append(Ignored(ref, f"status {obs.status}"))
            continue
        when = _when(obs)
        used = False
        parts: list[tuple[int | None, Any]] = [(None, obs)]
        parts += list(enumerate(obs.component or ()))
        for component, part in parts:
            spec = index.match(part.code)
            if spec is None:
                continue
            value = _value(spec, part, _Where(ref, i, component))
            if value is None:
                continue
            candidate = _Value(value, when, i, ref)
            held = latest[owner].get(spec.name)
            if held is None or candidate.newer_than(held):
                latest[owner][spec.name] = candidate
            used = True
        if not used:
            patients[owner].ignored.append(Ignored(ref, "no code of it is an input of this model"))
    reference_time = _as_datetime(bundle.timestamp) or now or datetime.now(timezone.utc)
    for ref, patient in patients.items():
        values = latest[ref]
        times = [v.when for v in values.values() if v.when is not None]
        _from_patient(resources[ref], index, patient, max(times) if times else reference_time)
        for name, v in values.items():
            patient.instance[name] = v.value
        in_order = sorted(values.values(), key=lambda v: v.order)  # in Bundle order, each once
        patient.basis = list(dict.fromkeys(v.reference for v in in_order))
    return BundleInput(list(patients.values()), stray)


@dataclass(frozen=True)
class _Where:
    """Where a value sits: its Observation, Bundle entry and component (for precise 422 answers)."""

    reference: str
    entry: int
    component: int | None = None

    def path(self, element: str) -> str:
        part = "" if self.component is None else f"component[{self.component}]."
        return f"{self.reference}.{part}{element}"

    def error(self, element: str, problem: str) -> InvalidInput:
        return InvalidInput(
            f"{self.path(element)} (Bundle.entry[{self.entry}]): {problem}", self.path(element)
        )


def _value(spec: FeatureSpec, part: Any, where: _Where) -> float | str | None:
    """The part's value in the feature's canonical unit (numeric) or category (categorical)."""
    coding = spec.coding
    assert coding is not None
    if spec.kind == "categorical":
        texts = list(_texts(part))
        for text in texts:
            for category in spec.categories or ():
                if text.lower() == category.lower():
                    return category
        if not texts:
            return None
        known = ", ".join(spec.categories or [])
        raise where.error("value", f"{texts[0]!r} is not a category of {spec.name!r} ({known})")
    if part.valueBoolean is not None:
        return 1.0 if part.valueBoolean else 0.0
    if part.valueInteger is not None:
        return float(part.valueInteger)
    q = part.valueQuantity
    if q is None or q.value is None:
        return None
    return _canonical(float(q.value), q, coding, spec, where)


def _canonical(value: float, q: Any, coding: FeatureCoding, spec: FeatureSpec, where: _Where) -> float:
    if q.system is not None and q.system != UCUM:
        raise where.error("valueQuantity.system", f"{q.system!r} is not UCUM ({UCUM})")
    unit = q.code if q.code is not None else q.unit
    canonical = coding.ucum
    if canonical is None:
        return value
    if not unit:
        if canonical in ("1", "[pH]"):  # a count, a score or a pH: no unit is the unit
            return value
        raise where.error("valueQuantity.code", f"no unit for {spec.name!r} (canonical unit {canonical!r})")
    try:
        return convert(value, unit, canonical, coding.molar_mass)
    except UnitError as exc:
        raise where.error("valueQuantity.code", f"{exc} (feature {spec.name!r})") from None


def _texts(part: Any) -> Iterable[str]:
    if part.valueString:
        yield part.valueString
    concept = part.valueCodeableConcept
    if concept is not None:
        for coding in concept.coding or ():
            for text in (coding.code, coding.display):
                if text:
                    yield text
        if concept.text:
            yield concept.text


def _from_patient(resource: Any, index: FeatureIndex, patient: PatientInput, at: datetime) -> None:
    """Age, sex and race from the Patient resource, for the features that take them from there."""
    age = index.patient.get(PatientField.AGE)
    born = _as_datetime(resource.birthDate)
    if age is not None and born is not None:
        patient.instance[age.name] = age_years(born.date(), at.date())
    sex = index.patient.get(PatientField.GENDER)
    if sex is not None and resource.gender in ("female", "male"):
        patient.instance[sex.name] = resource.gender
    race = index.patient.get(PatientField.RACE)
    if race is not None:
        value = _race(resource)
        if value is not None:
            patient.instance[race.name] = value


def age_years(born: date, at: date) -> float:
    """Age in years as SUPPORT2 records it: completed years plus the elapsed fraction of the current one
    (so a birthday gives a whole number, and leap years count as they fall)."""
    years = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    last = _anniversary(born, born.year + years)
    following = _anniversary(born, born.year + years + 1)
    return years + (at - last).days / (following - last).days


def _anniversary(born: date, year: int) -> date:
    try:
        return born.replace(year=year)
    except ValueError:  # born on 29 February: 1 March in other years
        return date(year, 3, 1)


def _race(resource: Any) -> str | None:
    race = None
    for ext in resource.extension or ():
        for sub in ext.extension or ():
            code = sub.valueCoding.code if sub.url == "ombCategory" and sub.valueCoding is not None else None
            if ext.url == US_CORE_ETHNICITY and code == OMB_HISPANIC:
                return "hispanic"
            if ext.url == US_CORE_RACE and code in OMB_RACE and race is None:
                race = OMB_RACE[code]
    return race
