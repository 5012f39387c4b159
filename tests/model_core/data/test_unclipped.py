"""Unclipped preprocessing (``clip=False``), ``Preprocessor.clip`` and ``implausible_rows``.

The novelty detector reads the scaled but unclipped inputs, the network the clipped ones; the loaders
build the network's input as ``clip(unclipped)``, so it must be *bitwise* what ``transform`` (clipped)
gives, or a served prediction would differ from the evaluated one. ``implausible_rows`` is the
evaluation's (scaled, vectorised) form of the server's per-row ``implausible``; they must agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from model_core.data.preprocessing import Preprocessor

NUMERIC = ("a", "b", "ind", "narrow", "k")
EPS32 = float(np.finfo(np.float32).eps)


def _train(rng: np.random.Generator, n: int = 400, constant: bool = True) -> dict[str, np.ndarray]:
    data: dict[str, np.ndarray] = {
        "a": rng.normal(50.0, 10.0, n),
        "b": rng.exponential(2.0, n),
        "ind": rng.integers(0, 2, n).astype(np.float64),  # 0/1 indicator
        "narrow": np.where(rng.random(n) < 0.9, 3.0, rng.normal(3.0, 1.0, n)),  # zero IQR
        "c": rng.choice(["x", "y", "z"], n).astype(object),
    }
    data["a"][rng.random(n) < 0.05] = np.nan
    if constant:
        data["k"] = np.full(n, 7.0)  # a constant training column (span 0)
    return data


def _pre(rng: np.random.Generator, constant: bool = True) -> Preprocessor:
    names = [*NUMERIC[: 4 + int(constant)], "c"]
    return Preprocessor.fit(_train(rng, constant=constant), names, categorical={"c"})


def _value(rng: np.random.Generator, pre: Preprocessor, name: str) -> float | None:
    """A raw value: in range, a far outlier (up to ±1e300), exactly a clip bound, or missing."""
    spec = pre.spec(name)
    assert spec.clip_low is not None and spec.clip_high is not None and spec.min is not None
    u = rng.random()
    if u < 0.1:
        return None
    if u < 0.2:
        return float(rng.choice([spec.clip_low, spec.clip_high]))
    if u < 0.45:
        sign = rng.choice([-1.0, 1.0])
        return float(sign * 10.0 ** rng.uniform(2.0, 300.0))
    if u < 0.55:  # just outside a clip bound
        return float(spec.clip_high + rng.exponential(1.0)) if rng.random() < 0.5 else spec.clip_low - 1.0
    return float(spec.min + rng.normal() * 10.0)


def _rows(rng: np.random.Generator, pre: Preprocessor, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    numeric = [s.name for s in pre.features if s.kind == "numeric"]
    for _ in range(n):
        row: dict[str, Any] = {name: _value(rng, pre, name) for name in numeric}
        row["c"] = None if rng.random() < 0.1 else str(rng.choice(["x", "y", "z"]))
        if rng.random() < 0.2:
            del row[str(rng.choice(numeric))]  # an omitted key is missing too
        rows.append(row)
    return rows


def _frame(rows: list[dict[str, Any]], pre: Preprocessor) -> pd.DataFrame:
    return pd.DataFrame(
        {s.name: [r.get(s.name) for r in rows] for s in pre.features},
    ).astype({s.name: "float64" for s in pre.features if s.kind == "numeric"})


def test_clip_of_unclipped_transform_is_bitwise_the_clipped_transform() -> None:
    """For 3000 random rows with far outliers (up to 1e300), values at and just past the clip bounds and
    missing values, over a constant, a zero-IQR and an indicator column: clip(transform(clip=False))
    is np.array_equal to transform() (same dtype), and the unclipped matrix really is not clipped."""
    rng = np.random.default_rng(30)
    pre = _pre(rng)
    rows = _rows(rng, pre, 3000)
    clipped, imputed = pre.transform(rows)
    with np.errstate(over="ignore"):  # 1e300 / span overflows float32 to inf, as intended
        raw, imputed_raw = pre.transform(rows, clip=False)
    assert raw.dtype == clipped.dtype == np.float32 and raw.shape == clipped.shape
    assert imputed == imputed_raw
    np.testing.assert_array_equal(pre.clip(raw), clipped)
    assert np.array_equal(pre.clip(raw), clipped)
    assert not np.array_equal(raw, clipped)
    assert np.abs(raw).max() > 1e6 * np.abs(clipped).max()
    # clip is idempotent and leaves the one-hot columns alone
    np.testing.assert_array_equal(pre.clip(clipped), clipped)


def test_clip_of_unclipped_frame_is_bitwise_the_clipped_frame() -> None:
    """The same for the training path: clip(transform_frame(frame, clip=False)) == transform_frame(frame)
    bitwise, with NaN as missing, and transform_frame agrees bitwise with transform on both paths."""
    rng = np.random.default_rng(31)
    pre = _pre(rng)
    rows = _rows(rng, pre, 2000)
    frame = _frame(rows, pre)
    with np.errstate(over="ignore"):
        raw = pre.transform_frame(frame, clip=False)
        raw_rows, _ = pre.transform(rows, clip=False)
    clipped = pre.transform_frame(frame)
    np.testing.assert_array_equal(pre.clip(raw), clipped)
    np.testing.assert_array_equal(raw, raw_rows)
    np.testing.assert_array_equal(clipped, pre.transform(rows)[0])


def test_clip_works_along_the_last_axis_of_windows() -> None:
    """(n, window, width) windows, as the sequence loader builds them from transform_frame(clip=False):
    clip(windows) is bitwise the clipped windows, and a (n·window, width) matrix clipped then reshaped
    equals the window batch clipped."""
    rng = np.random.default_rng(32)
    pre = _pre(rng)
    n, window = 40, 24
    rows = _rows(rng, pre, n * window)
    frame = _frame(rows, pre)
    with np.errstate(over="ignore"):
        raw = pre.transform_frame(frame, clip=False).reshape(n, window, pre.n_outputs)
    clipped = pre.transform_frame(frame).reshape(n, window, pre.n_outputs)
    assert not np.array_equal(raw, clipped)
    np.testing.assert_array_equal(pre.clip(raw), clipped)
    np.testing.assert_array_equal(pre.clip(raw.reshape(n * window, -1)).reshape(raw.shape), pre.clip(raw))


def _near_bound(pre: Preprocessor, row: Mapping[str, Any]) -> bool:
    """Whether a numeric value of ``row`` lies within float32 resolution of its plausible range's ends
    on the scaled axis (where the float32 model input cannot decide which side it is on)."""
    for spec in pre.features:
        v = row.get(spec.name)
        if spec.kind != "numeric" or v is None or spec.max is None or spec.min is None:
            continue
        span = spec.max - spec.min
        if span <= 0.0:
            continue
        for bound in (spec.plausible_low, spec.plausible_high):
            assert bound is not None
            zb = (bound - spec.min) / span
            if abs((v - bound) / span) <= 4 * EPS32 * max(1.0, abs(zb)):
                return True
    return False


def _plausible_value(rng: np.random.Generator, pre: Preprocessor, name: str) -> float | None:
    """Values inside, outside and just around the plausible range (up to 1e300), or missing."""
    spec = pre.spec(name)
    assert spec.plausible_low is not None and spec.plausible_high is not None
    u = rng.random()
    if u < 0.1:
        return None
    if u < 0.3:
        return float(rng.uniform(spec.plausible_low, spec.plausible_high))
    if u < 0.5:  # just past either end, by 1e-6 .. 1 of the range
        width = spec.plausible_high - spec.plausible_low
        d = width * 10.0 ** rng.uniform(-6, 0)
        return float(spec.plausible_high + d if rng.random() < 0.5 else spec.plausible_low - d)
    if u < 0.6:
        return float(rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(3.0, 300.0))
    return _value(rng, pre, name)


def test_implausible_rows_agrees_with_implausible_per_row() -> None:
    """For 3000 random rows (no constant training column, see the xfail below), implausible_rows on the
    unclipped matrix is True exactly for the rows where ``implausible(row)`` names a feature, and the
    ``flagged`` output of transform names the same numeric features. Rows with a value within float32
    resolution (4 eps) of a plausible bound are left out: the float32 matrix cannot tell those apart."""
    rng = np.random.default_rng(33)
    pre = _pre(rng, constant=False)
    numeric = [s.name for s in pre.features if s.kind == "numeric"]
    rows = [
        {
            **{name: _plausible_value(rng, pre, name) if rng.random() < 0.3 else None for name in numeric},
            "c": "x",
        }
        for _ in range(3000)
    ]
    rows = [r for r in rows if not _near_bound(pre, r)]
    assert len(rows) > 2500  # the zero-IQR column's clip bounds are its plausible bounds
    flagged: list[list[str]] = []
    with np.errstate(over="ignore"):
        z, _ = pre.transform(rows, flagged=flagged, clip=False)
    got = pre.implausible_rows(z)
    expected = np.array([bool(pre.implausible(r)) for r in rows])
    assert 0.2 < expected.mean() < 0.95  # both outcomes well represented
    np.testing.assert_array_equal(got, expected)
    assert [f for f in flagged] == [pre.implausible(r) for r in rows]


def test_implausible_rows_on_windows_is_any_time_step() -> None:
    """(n, window, width): a window is implausible iff any of its time steps is (per ``implausible``)."""
    rng = np.random.default_rng(34)
    pre = _pre(rng, constant=False)
    numeric = [s.name for s in pre.features if s.kind == "numeric"]
    n, window = 200, 6
    rows: list[dict[str, Any]] = []
    while len(rows) < n * window:
        r: dict[str, Any] = {name: pre.spec(name).impute for name in numeric}
        r["c"] = "y"
        if rng.random() < 0.03:
            name = str(rng.choice(numeric))
            r[name] = _plausible_value(rng, pre, name)
        if not _near_bound(pre, r):
            rows.append(r)
    with np.errstate(over="ignore"):
        z = pre.transform_frame(_frame(rows, pre), clip=False).reshape(n, window, -1)
    per_step = np.array([bool(pre.implausible(r)) for r in rows]).reshape(n, window)
    assert 0 < per_step.any(1).sum() < n
    np.testing.assert_array_equal(pre.implausible_rows(z), per_step.any(1))


def test_implausible_rows_within_float32_resolution_of_a_bound() -> None:
    """Documents the precision caveat the agreement test leaves out: on a fine grid around each plausible
    bound, the two forms disagree only where the value is within 4 float32 eps of the bound (scaled)."""
    rng = np.random.default_rng(35)
    pre = _pre(rng, constant=False)
    base = {s.name: s.impute for s in pre.features}
    for name in ("a", "b"):
        spec = pre.spec(name)
        assert spec.plausible_low is not None and spec.plausible_high is not None
        span = spec.max - spec.min  # type: ignore[operator]
        for bound in (spec.plausible_low, spec.plausible_high):
            offsets = np.concatenate([-np.logspace(-12, -2, 200), [0.0], np.logspace(-12, -2, 200)]) * span
            rows = [{**base, name: float(bound + d)} for d in offsets]
            z, _ = pre.transform(rows, clip=False)
            got = pre.implausible_rows(z)
            expected = np.array([bool(pre.implausible(r)) for r in rows])
            near = np.array([_near_bound(pre, r) for r in rows])
            assert not (got != expected)[~near].any()


@pytest.mark.xfail(
    strict=True,
    reason="implausible_rows skips numeric columns that were constant in training (span 0: the scaled "
    "value is 0 whatever the raw value), while implausible(row) flags any other value of them",
)
def test_implausible_rows_agrees_on_a_constant_training_column() -> None:
    """A column constant (7.0) in training has plausible range [7, 7]: the server's implausible(row)
    flags 9.0; implausible_rows on the unclipped matrix should flag the same row."""
    rng = np.random.default_rng(36)
    pre = _pre(rng, constant=True)
    row = {"a": 50.0, "b": 1.0, "ind": 0.0, "narrow": 3.0, "k": 9.0, "c": "x"}
    assert pre.implausible(row) == ["k"]
    z, _ = pre.transform([row], clip=False)
    assert bool(pre.implausible_rows(z)[0])


def test_values_exactly_at_an_exactly_representable_bound_are_plausible_in_both_forms() -> None:
    """Where the scaled plausible bound is exact in float32 (a zero-IQR column: bounds = training min and
    max, scaled 0 and 1; the 0/1 indicator: [-1, 2]), a value exactly at the bound is plausible for
    both forms (the range is closed) and the next double past it implausible for both."""
    rng = np.random.default_rng(37)
    pre = _pre(rng, constant=False)
    base = {s.name: s.impute for s in pre.features}
    for name in ("narrow", "ind"):
        spec = pre.spec(name)
        assert spec.plausible_low is not None and spec.plausible_high is not None
        rows = [
            {**base, name: spec.plausible_low},
            {**base, name: spec.plausible_high},
            {**base, name: float(np.nextafter(spec.plausible_low, -np.inf)) - 1e-6},
            {**base, name: float(np.nextafter(spec.plausible_high, np.inf)) + 1e-6},
        ]
        z, _ = pre.transform(rows, clip=False)
        expected = [bool(pre.implausible(r)) for r in rows]
        assert expected == [False, False, True, True]
        assert pre.implausible_rows(z).tolist() == expected
