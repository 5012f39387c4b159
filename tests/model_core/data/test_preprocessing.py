"""Preprocessor: fitted constants checked by hand, both transform paths, errors, and persistence.

The table is small enough that every expected number below can be verified with pencil and paper:
x observed = [1, 2, 3, 4, 100] (one missing) -> Q1 2, median 3, Q3 4, IQR 2, clip [-14, 20],
after clipping/imputation min 1, max 20, plausible [1 - 2, 100 + 2] = [-1, 102].
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from model_core.data.features import FeatureSpec
from model_core.data.preprocessing import Preprocessor
from model_core.data.values import PreprocessingError

REPO_ROOT = Path(__file__).resolve().parents[3]


def _table() -> dict[str, np.ndarray]:
    return {
        "x": np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan]),
        "c": np.array(["b", "a", "b", None, "c", "b"], dtype=object),
        "d": np.array([0, 0, 0, 1, 0, 0]),
        "ignored": np.arange(6),
    }


@pytest.fixture()
def pre() -> Preprocessor:
    return Preprocessor.fit(_table(), ["x", "c", "d"], categorical={"c"}, units={"x": "mmHg"})


def test_numeric_constants_by_hand(pre: Preprocessor) -> None:
    x = pre.spec("x")
    assert x.kind == "numeric" and x.unit == "mmHg"
    assert x.clip_low == pytest.approx(2 - 8 * 2)
    assert x.clip_high == pytest.approx(4 + 8 * 2)
    assert x.impute == pytest.approx(3.0)
    assert x.min == pytest.approx(1.0)
    assert x.max == pytest.approx(20.0)  # 100 clipped to 20 before MinMax is fitted
    assert (x.plausible_low, x.plausible_high) == (pytest.approx(-1.0), pytest.approx(102.0))


def test_zero_iqr_indicator_is_not_erased(pre: Preprocessor) -> None:
    d = pre.spec("d")
    assert (d.clip_low, d.clip_high, d.min, d.max, d.impute) == (0.0, 1.0, 0.0, 1.0, 0.0)
    x, _ = pre.transform([{"d": 1}, {"d": 0}])
    assert x[:, -1].tolist() == [1.0, 0.0]


def test_categorical_order_and_mode(pre: Preprocessor) -> None:
    c = pre.spec("c")
    assert c.categories == ["a", "b", "c"]
    assert c.impute == "b"
    assert c.unit == ""
    assert pre.output_names == ["x", "c=a", "c=b", "c=c", "d"]
    assert pre.n_outputs == 5
    assert pre.feature_names == ["x", "c", "d"]


def test_transform_values_and_imputation_report(pre: Preprocessor) -> None:
    rows: list[dict[str, Any]] = [
        {"x": 100, "c": "a", "d": 1},
        {"x": None, "c": None},  # d absent: also missing
        {"x": 3.0, "c": "never-seen", "d": 0},
        {"x": -50.0, "c": "c", "d": True},
    ]
    x, imputed = pre.transform(rows)
    assert x.dtype == np.float32 and x.shape == (4, 5)
    expected = np.array(
        [
            [1.0, 1, 0, 0, 1],  # (20 - 1) / 19 after clipping 100 -> 20
            [2 / 19, 0, 1, 0, 0],  # median 3, mode "b", d median 0
            [2 / 19, 0, 0, 0, 0],  # unknown category -> all zeros
            [(-14 - 1) / 19, 0, 0, 1, 1],  # clipped at -14, may leave [0, 1]
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert imputed == [[], ["x", "c", "d"], [], []]


def test_row_and_frame_paths_agree(pre: Preprocessor) -> None:
    frame = pd.DataFrame(
        {
            "x": [100.0, np.nan, 3.0, -50.0, 2.5],
            "c": ["a", None, "never-seen", "c", "b"],
            "d": [1, 0, 0, 1, 0],
            "target": [0, 1, 0, 1, 1],
        }
    )
    rows = [
        {k: (None if pd.isna(v) else v) for k, v in rec.items() if k != "target"}
        for rec in frame.to_dict("records")
    ]
    x_rows, _ = pre.transform(rows)
    np.testing.assert_array_equal(pre.transform_frame(frame), x_rows)
    as_dict = {name: frame[name].to_numpy() for name in frame.columns}
    np.testing.assert_array_equal(pre.transform_frame(as_dict), x_rows)


def test_fit_from_dataframe_equals_fit_from_arrays(pre: Preprocessor) -> None:
    frame = pd.DataFrame(_table())
    assert Preprocessor.fit(frame, ["x", "c", "d"], {"c"}, {"x": "mmHg"}) == pre


def test_unknown_feature_is_named(pre: Preprocessor) -> None:
    with pytest.raises(PreprocessingError, match="bogus") as info:
        pre.transform([{"x": 1.0, "bogus": 3}])
    assert info.value.field == "bogus" and info.value.row == 0
    assert isinstance(info.value, ValueError)


def test_the_error_names_the_row_of_a_many_row_request(pre: Preprocessor) -> None:
    with pytest.raises(PreprocessingError) as info:
        pre.transform([{"x": 1.0}, {}, {"x": "high"}, {"x": 2.0}])
    assert (info.value.row, info.value.field) == (2, "x")
    with pytest.raises(PreprocessingError, match="row 1") as info:
        pre.transform([{}, [1.0]])  # type: ignore[list-item]
    assert (info.value.row, info.value.field) == (1, None)


@pytest.mark.parametrize("bad", [math.nan, np.float32("nan"), math.inf, -math.inf])
def test_explicit_nan_or_inf_is_an_error(pre: Preprocessor, bad: float) -> None:
    with pytest.raises(PreprocessingError) as info:
        pre.transform([{"x": bad}])
    assert info.value.field == "x"


@pytest.mark.parametrize("bad", ["12.5", "high", [1.0], {"v": 1}, 1j])
def test_non_numeric_value_is_an_error(pre: Preprocessor, bad: Any) -> None:
    with pytest.raises(PreprocessingError, match="'x'") as info:
        pre.transform([{"x": bad}])
    assert info.value.field == "x"


def test_categorical_explicit_nan_is_an_error(pre: Preprocessor) -> None:
    with pytest.raises(PreprocessingError) as info:
        pre.transform([{"c": math.nan}])
    assert info.value.field == "c"


def test_non_mapping_row_is_an_error(pre: Preprocessor) -> None:
    with pytest.raises(PreprocessingError, match="row 0"):
        pre.transform([[1.0, "a", 0]])  # type: ignore[list-item]


def test_frame_errors(pre: Preprocessor) -> None:
    with pytest.raises(PreprocessingError) as info:
        pre.transform_frame({"x": np.array([1.0, np.inf]), "c": np.array(["a", "b"]), "d": np.zeros(2)})
    assert info.value.field == "x"
    with pytest.raises(PreprocessingError) as info:
        pre.transform_frame({"x": np.ones(2), "c": np.array(["a", "b"])})
    assert info.value.field == "d"
    with pytest.raises(PreprocessingError) as info:
        pre.transform_frame({"x": np.array(["1", "oops"], dtype=object), "c": ["a", "b"], "d": [0, 1]})
    assert info.value.field == "x"


def test_empty_frame_gives_empty_matrix(pre: Preprocessor) -> None:
    x = pre.transform_frame({"x": np.zeros(0), "c": np.zeros(0, dtype=object), "d": np.zeros(0)})
    assert x.shape == (0, 5) and x.dtype == np.float32


def test_implausible_flags(pre: Preprocessor) -> None:
    assert pre.implausible({"x": 101.0, "c": "zzz"}) == []
    assert pre.implausible({"x": 103.0, "d": 2}) == ["x", "d"]
    assert pre.implausible({"x": None, "d": "junk"}) == []


def test_constant_column_scales_to_zero() -> None:
    pre = Preprocessor.fit({"k": np.array([5.0, 5.0, np.nan])}, ["k"])
    x, imputed = pre.transform([{"k": 5.0}, {"k": 9.0}, {}])
    assert x.tolist() == [[0.0], [0.0], [0.0]]
    assert imputed == [[], [], ["k"]]


def test_json_round_trip_is_identical(pre: Preprocessor) -> None:
    payload = json.loads(json.dumps(pre.to_dict()))
    restored = Preprocessor.from_dict(payload)
    assert restored == pre
    rows: list[dict[str, Any]] = [{"x": 2.2, "c": "c", "d": 1}, {}, {"x": 1e6, "c": "a"}]
    a, ia = pre.transform(rows)
    b, ib = restored.transform(rows)
    np.testing.assert_array_equal(a, b)
    assert ia == ib


def test_fit_errors() -> None:
    with pytest.raises(PreprocessingError) as info:
        Preprocessor.fit({"x": np.array([np.nan, np.nan])}, ["x"])
    assert info.value.field == "x"
    with pytest.raises(PreprocessingError) as info:
        Preprocessor.fit({"x": np.ones(3)}, ["x", "y"])
    assert info.value.field == "y"
    with pytest.raises(ValueError, match="not features"):
        Preprocessor.fit({"x": np.ones(3)}, ["x"], categorical={"z"})


def test_corrupt_specs_are_rejected_at_load() -> None:
    with pytest.raises(ValidationError):
        FeatureSpec(name="x", kind="numeric", clip_low=0.0)
    with pytest.raises(ValidationError):
        FeatureSpec(name="c", kind="categorical", categories=["a"], impute="b")
    good = FeatureSpec(name="c", kind="categorical", categories=["a"], impute="a")
    with pytest.raises(ValidationError):
        Preprocessor(features=[good, good])
    with pytest.raises(ValidationError):
        Preprocessor.from_dict({"features": [{"name": "x", "kind": "numeric", "surprise": 1}]})


def test_serving_import_pulls_no_heavy_dependencies() -> None:
    """The server imports preprocessing per process; it must not drag in pandas, torch or sklearn."""
    code = (
        "import sys, model_core\n"
        "before = set(sys.modules)\n"
        "import model_core.data.preprocessing\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "heavy = new & {'pandas', 'torch', 'sklearn', 'scipy'}\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
