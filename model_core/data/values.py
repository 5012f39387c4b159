"""Reading raw request and table values: what counts as a number, a category and a missing value.

Why its own module: the rules (``None`` or absent = not measured and imputed; NaN, infinity, a string for a
number or an unknown feature = a client bug, :class:`PreprocessingError` naming the field) are shared by
fitting (:mod:`model_core.data.features`) and replaying (:mod:`model_core.data.preprocessing`), and the
serving process imports them on every request: numpy only.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

if TYPE_CHECKING:  # pandas is optional on the serving path; only the type checker needs it here.
    import pandas as pd

#: Scalar types accepted as numbers (numpy floats/ints are also registered as numbers.Real).
NUMBER_TYPES = (Real, np.integer, np.floating, np.bool_)
#: The largest finite double: an integer beyond it is refused rather than rounded (or overflowing), so
#: "a finite double" is exactly what a numeric feature accepts.
MAX_FLOAT = sys.float_info.max

#: A table to fit or transform: a pandas DataFrame or any mapping of column name -> 1-D array.
ColumnSource: TypeAlias = "pd.DataFrame | Mapping[str, Any]"


class PreprocessingError(ValueError):
    """A request value or table column that cannot be preprocessed.

    Subclasses ValueError so generic callers still catch it, and carries ``field`` (the feature name, or
    None for errors about the whole row) and ``row`` (the request row's index, set by
    :meth:`Preprocessor.transform`) so the server can point the client at the offending input.
    """

    def __init__(self, message: str, field: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.row = row


def get_column(data: ColumnSource, name: str) -> np.ndarray:
    """Fetch one column as a 1-D numpy array from a DataFrame or mapping, without importing pandas."""
    try:
        present = name in data
    except TypeError:
        present = False
    if not present:
        raise PreprocessingError(f"column {name!r} is missing from the table", field=name)
    column = data[name]
    to_numpy = getattr(column, "to_numpy", None)
    array = np.asarray(to_numpy() if callable(to_numpy) else column)
    if array.ndim != 1:
        raise PreprocessingError(f"column {name!r} must be one-dimensional, got shape {array.shape}", name)
    return array


def is_missing_scalar(value: Any) -> bool:
    """None, NaN, NaT or pandas' NA. Used only where a table cell means missing (fit / frame paths)."""
    if value is None:
        return True
    if type(value).__name__ in {"NAType", "NaTType"}:
        return True
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def numeric_column(raw: np.ndarray, name: str) -> np.ndarray:
    """A column as float64 with NaN for missing; non-numeric cells and infinities raise."""
    if raw.dtype.kind in "biuf":
        values = raw.astype(np.float64)
    else:
        values = np.empty(len(raw), dtype=np.float64)
        for i, cell in enumerate(raw):
            if is_missing_scalar(cell):
                values[i] = np.nan
            elif isinstance(cell, NUMBER_TYPES):
                values[i] = float(cell)
            else:
                raise PreprocessingError(f"feature {name!r} is numeric, got {cell!r} in row {i}", field=name)
    if np.isinf(values).any():
        row = int(np.flatnonzero(np.isinf(values))[0])
        raise PreprocessingError(f"feature {name!r} has an infinite value in row {row}", field=name)
    return values


def category_column(raw: np.ndarray, name: str) -> list[str | None]:
    """A column as category strings with None for missing."""
    return [None if is_missing_scalar(cell) else category_string(cell, name) for cell in raw]


def category_string(value: Any, name: str) -> str:
    """Canonical string of a category value, so 3, 3.0 and "3" from different sources agree."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, (Real, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            raise PreprocessingError(f"feature {name!r} is categorical, got {value!r}", field=name)
        return str(int(number)) if number.is_integer() else repr(number)
    raise PreprocessingError(f"feature {name!r} is categorical, got a {type(value).__name__}", field=name)


def numeric_value(value: Any, name: str) -> float | None:
    """A request value for a numeric feature: None means missing; anything not a finite number raises.

    Booleans are accepted as 1/0 because JSON clients naturally send ``true`` for 0/1 indicators.
    Strings are rejected even when they look numeric: a string here means the client serialised the
    wrong thing, and guessing would hide that.
    """
    if value is None:
        return None
    kind = type(value)
    if kind is not float and kind is not int and not isinstance(value, NUMBER_TYPES):  # JSON's two first
        raise PreprocessingError(
            f"feature {name!r} must be a number or null, got {type(value).__name__} {value!r}", field=name
        )
    if kind is int and not -MAX_FLOAT <= value <= MAX_FLOAT:  # float() would round it, or overflow
        raise PreprocessingError(
            f"feature {name!r} is out of range (an integer beyond the float range)", field=name
        )
    number = float(value)
    if math.isnan(number):
        raise PreprocessingError(f"feature {name!r} is NaN; send null for a missing value", field=name)
    if math.isinf(number):
        raise PreprocessingError(f"feature {name!r} is infinite", field=name)
    return number


def category_value(value: Any, name: str) -> str | None:
    """A request value for a categorical feature: None means missing; NaN is rejected like for numbers."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and math.isnan(float(value)):
        raise PreprocessingError(f"feature {name!r} is NaN; send null for a missing value", field=name)
    return category_string(value, name)
