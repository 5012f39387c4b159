"""FHIR R4 and CDS Hooks: clinical resources in, risk assessments and cards out (``docs/service.md``)."""

from __future__ import annotations

from collections.abc import Iterable

from model_core.data.preprocessing import FeatureSpec


def takes_fhir(features: Iterable[FeatureSpec]) -> bool:
    """Whether a model's features carry FHIR codings (only those models are offered FHIR and CDS Hooks)."""
    return any(spec.coding is not None for spec in features)


def warm() -> None:
    """Import the FHIR models and build the UCUM registry now (~1 s), not on the first FHIR request."""
    from fhir.resources.R4B.bundle import Bundle  # noqa: F401

    from service.fhir.units import conversion

    conversion("[degF]", "Cel")
