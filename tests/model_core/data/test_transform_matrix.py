"""``Preprocessor.transform_matrix`` (an Open Inference Protocol tensor) against ``transform`` (rows).

The oracle is the definition of the tensor: column ``j`` is feature ``j``, NaN is a missing value and a
categorical value is its category's index. Each matrix is turned into the rows it stands for and both
paths must give bitwise the same model input, the same imputed names and the same flagged names.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from model_core.data.preprocessing import Preprocessor
from model_core.data.values import PreprocessingError


def _pre() -> Preprocessor:
    rng = np.random.default_rng(7)
    n = 300
    table = {
        "a": rng.normal(50.0, 10.0, n),
        "c": rng.choice(np.array(["x", "y", "z"], dtype=object), n),
        "b": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(0.0, 1.0, n)),
        "flag": rng.integers(0, 2, n).astype(float),
        "k": rng.choice(np.array(["m", "f"], dtype=object), n),
        "const": np.full(n, 3.0),
    }
    return Preprocessor.fit(table, list(table), categorical={"c", "k"})


def _rows(pre: Preprocessor, values: np.ndarray) -> list[dict[str, Any]]:
    """The V1 rows a tensor stands for."""
    rows = []
    for line in values.tolist():
        row: dict[str, Any] = {}
        for spec, v in zip(pre.features, line, strict=True):
            if math.isnan(v):
                continue
            row[spec.name] = (spec.categories or [])[int(v)] if spec.kind == "categorical" else v
        rows.append(row)
    return rows


def _matrix(pre: Preprocessor, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.empty((n, len(pre.features)))
    for j, spec in enumerate(pre.features):
        if spec.kind == "categorical":
            values[:, j] = rng.integers(0, len(spec.categories or []), n)
        else:  # inside, beyond the plausible range and far beyond the clipping bounds
            assert spec.plausible_low is not None and spec.plausible_high is not None
            span = spec.plausible_high - spec.plausible_low
            values[:, j] = rng.uniform(spec.plausible_low - span, spec.plausible_high + span, n)
    values[rng.random(values.shape) < 0.2] = np.nan
    values[0] = np.nan  # one row of nothing but imputed values
    return values


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bitwise_the_row_path(clip: bool, seed: int) -> None:
    pre = _pre()
    values = _matrix(pre, 64, seed)
    z, imputed, flagged = pre.transform_matrix(values, clip=clip)
    row_flagged: list[list[str]] = []
    want, want_imputed = pre.transform(_rows(pre, values), row_flagged, clip=clip)
    assert z.dtype == want.dtype == np.float32 and z.shape == want.shape
    assert z.tobytes() == want.tobytes()
    assert imputed == want_imputed and flagged == row_flagged
    assert any(flagged) and any(imputed) and imputed[0] == pre.feature_names


def test_float32_tensors_give_the_same_answer_as_their_float64_values() -> None:
    pre = _pre()
    values = _matrix(pre, 16, 3).astype(np.float32)
    z, _, _ = pre.transform_matrix(values)
    assert z.tobytes() == pre.transform(_rows(pre, values.astype(np.float64)))[0].tobytes()


@pytest.mark.parametrize("bad", [2.5, 3.0, -1.0, math.inf, -math.inf])
def test_a_category_index_outside_the_categories_names_row_and_feature(bad: float) -> None:
    pre = _pre()
    values = _matrix(pre, 8, 4)
    values[5, pre.feature_names.index("c")] = bad
    with pytest.raises(PreprocessingError) as err:
        pre.transform_matrix(values)
    assert (err.value.row, err.value.field) == (5, "c")
    assert str(err.value) == f"feature 'c' is categorical: send a category index 0..2, got {bad!r}"


def test_infinity_is_refused_after_every_category_check_as_the_rows_were() -> None:
    pre = _pre()
    values = _matrix(pre, 8, 5)
    values[1, pre.feature_names.index("b")] = math.inf
    with pytest.raises(PreprocessingError) as err:
        pre.transform_matrix(values)
    assert (err.value.row, err.value.field, str(err.value)) == (1, "b", "feature 'b' is infinite")
    with pytest.raises(PreprocessingError) as row_err:
        pre.transform(_rows(pre, values))
    assert (row_err.value.row, row_err.value.field, str(row_err.value)) == (1, "b", str(err.value))
    values[6, pre.feature_names.index("k")] = 2.0  # a later row's bad category is reported first
    with pytest.raises(PreprocessingError) as err:
        pre.transform_matrix(values)
    assert (err.value.row, err.value.field) == (6, "k")


def test_a_matrix_of_the_wrong_width_is_refused() -> None:
    pre = _pre()
    with pytest.raises(PreprocessingError, match="expected 6 columns"):
        pre.transform_matrix(np.zeros((2, 5)))
