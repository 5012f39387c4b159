"""UCUM unit conversion: ``ucumvert`` (the UCUM grammar, mapped onto a ``pint`` registry).

Why this library: UCUM has its own syntax (``10*3/uL``, ``mm[Hg]``, ``[degF]``, ``mL/(24.h)``) that no
general unit library parses; ``ucumvert`` implements the UCUM grammar and hands each unit to ``pint``,
which does the arithmetic, offsets (°F to °C) included. Nothing here is a table of factors: a unit's
conversion to a feature's canonical unit is asked of pint once and cached as the affine map
``canonical = scale * value + offset`` (every UCUM conversion is affine), so a Bundle of a thousand
patients pays the grammar once per distinct unit, not per value.

Mass and amount-of-substance concentrations (mg/dL and µmol/L of creatinine) are linked by the
analyte's molar mass from the feature's coding, through pint's ``chemistry`` context.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


class UnitError(ValueError):
    """A unit that is not UCUM, or that cannot be converted to the feature's canonical unit."""


@dataclass(frozen=True)
class Affine:
    """``canonical = scale * value + offset``."""

    scale: float
    offset: float

    def __call__(self, value: float) -> float:
        return self.scale * value + self.offset


_lock = threading.Lock()
_registry: Any = None


def registry() -> Any:
    """The process's ``PintUcumRegistry`` (built once, ~0.7 s: the server builds it while loading)."""
    global _registry
    with _lock:
        if _registry is None:
            from ucumvert import PintUcumRegistry

            _registry = PintUcumRegistry()
        return _registry


def _quantity(ureg: Any, value: float, ucum: str) -> Any:
    """``value`` in the UCUM unit ``ucum`` as a pint quantity (offset units such as °F kept as such)."""
    unit = ureg.from_ucum(ucum)
    if unit.magnitude == 1:
        return ureg.Quantity(value, unit.units)
    return value * unit  # a unit with a factor, e.g. mL/(24.h): the factor is part of the unit


@lru_cache(maxsize=1024)
def conversion(source: str, canonical: str, molar_mass: float | None = None) -> Affine:
    """The affine map from ``source`` to ``canonical`` (both UCUM codes), cached per triple."""
    if source == canonical:
        return Affine(1.0, 0.0)
    ureg = registry()
    try:
        target = ureg.from_ucum(canonical)
        points = []
        for x in (0.0, 1.0):
            q = _quantity(ureg, x, source)
            if molar_mass is not None:
                with ureg.context("chemistry", mw=molar_mass * ureg("g/mol")):
                    converted = q.to(target.units)
            else:
                converted = q.to(target.units)
            points.append(float(converted.magnitude) / float(target.magnitude))
    except Exception as exc:  # ucumvert's parse errors and pint's dimensionality errors alike
        raise UnitError(_explain(source, canonical, exc)) from None
    return Affine(points[1] - points[0], points[0])


def _explain(source: str, canonical: str, exc: Exception) -> str:
    name = type(exc).__name__
    if name in ("InvalidUcumError", "VisitError", "UndefinedUnitError"):
        return f"{source!r} is not a UCUM unit this server knows"
    return f"{source!r} cannot be converted to {canonical!r}"


def convert(value: float, source: str, canonical: str, molar_mass: float | None = None) -> float:
    """``value`` in ``source`` expressed in ``canonical``; :class:`UnitError` when impossible."""
    return conversion(source, canonical, molar_mass)(value)
