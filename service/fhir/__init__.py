"""FHIR R4 and CDS Hooks: clinical resources in, risk assessments and cards out (``docs/service.md``)."""

from __future__ import annotations


def warm() -> None:
    """Import the FHIR models and build the UCUM registry now (~1 s), not on the first FHIR request."""
    from fhir.resources.R4B.bundle import Bundle  # noqa: F401

    from service.fhir.units import conversion

    conversion("[degF]", "Cel")
