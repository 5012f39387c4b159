"""Tabular preprocessing that can be fitted once and replayed anywhere.

Why this module exists and why it looks the way it does:

* The preprocessing fitted on a training split is part of the model. A checkpoint that stores only the
  network weights cannot be served, because the server would have to re-derive clipping bounds, medians
  and scaling constants it never saw. So the fitted state is a small, JSON-safe pydantic model
  (:meth:`Preprocessor.to_dict` goes into the checkpoint's ``manifest.json``), and replaying it needs
  nothing but numpy.
* The serving process imports this module for every request, so it deliberately imports neither torch,
  nor scikit-learn, nor pandas. pandas data frames are still accepted by :meth:`Preprocessor.fit` and
  :meth:`Preprocessor.transform_frame` through duck typing (``frame[name]`` and ``name in frame``).
* Three transforms, one semantics (tested): :meth:`Preprocessor.transform` takes request rows (dicts)
  and reports per row what was imputed (an answer resting on filled-in values must say so),
  :meth:`Preprocessor.transform_matrix` the same for an Open Inference Protocol tensor, bitwise, and
  :meth:`Preprocessor.transform_frame` is the column path of training and evaluation.
* Missing and invalid are different things. ``None`` (or an absent key) means "not measured" and is
  imputed, exactly as a missing cell in the training CSV was. An explicit NaN or infinity, a string for a
  numeric feature, or an unknown feature name is a client bug; silently imputing it would hide the bug
  and produce a confident prediction from garbage, so it raises :class:`PreprocessingError` naming the
  offending field (the server turns that into a 422 response).

Per numeric feature the fitted steps are, in order: impute missing values with the training median,
clip to ``[Q1 - 8*IQR, Q3 + 8*IQR]`` of the training split (8*IQR only removes gross outliers such as
unit or data-entry errors; clinical extremes survive), then MinMax-scale with the training minimum and
maximum taken after clipping and imputation. Categorical features are one-hot encoded over the sorted
training categories; an unseen category encodes as all zeros (no evidence for any known category rather
than a crash), and a missing value is imputed with the training mode.

One feature's fitted constants and their fitting live in :mod:`model_core.data.features`, the rules for
reading a raw value (and :class:`~model_core.data.values.PreprocessingError`) in
:mod:`model_core.data.values`; this module is the whole table's replay.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from model_core.data.coding import FeatureCoding
from model_core.data.features import FeatureSpec, fit_categorical, fit_numeric
from model_core.data.plans import Bounds, MatrixPlan, ScalePlan, numeric_plans
from model_core.data.values import (
    ColumnSource,
    PreprocessingError,
    category_column,
    category_value,
    get_column,
    numeric_column,
    numeric_value,
)

__all__ = ["Preprocessor"]


class Preprocessor(BaseModel):
    """An ordered list of fitted :class:`FeatureSpec`, i.e. the whole raw-input -> model-input mapping."""

    model_config = ConfigDict(extra="forbid")

    features: list[FeatureSpec]

    _by_name: dict[str, FeatureSpec] = PrivateAttr(default_factory=dict)
    _offsets: dict[str, int] = PrivateAttr(default_factory=dict)
    #: per-request fast path: (spec, offset) pairs and the numeric columns' scaling as arrays
    _plan: list[tuple[FeatureSpec, int]] = PrivateAttr(default_factory=list)
    _numeric: ScalePlan | None = PrivateAttr(default=None)
    _matrix: MatrixPlan = PrivateAttr()
    _width: int = PrivateAttr(default=0)
    #: (columns, low, high) of the numeric features with a plausible range, on the scaled axis
    _plausible: Bounds | None = PrivateAttr(default=None)
    #: (columns, low, high): the clipping bounds on the scaled axis (``clip``)
    _scaled_clip: Bounds | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique_names(self) -> Preprocessor:
        """Duplicate names would make request dicts ambiguous, so they are rejected up front."""
        names = [spec.name for spec in self.features]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate feature names: {duplicates}")
        return self

    def model_post_init(self, __context: Any) -> None:
        """Precompute name lookups and column offsets once instead of on every request."""
        offset = 0
        for spec in self.features:
            self._by_name[spec.name] = spec
            self._offsets[spec.name] = offset
            self._plan.append((spec, offset))
            offset += spec.n_outputs
        self._width = offset
        numeric = [(spec, self._offsets[spec.name]) for spec in self.features if spec.kind == "numeric"]
        self._numeric, self._scaled_clip, self._plausible = numeric_plans(numeric)
        self._matrix = MatrixPlan.of(self._plan)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        data: ColumnSource,
        feature_names: Sequence[str],
        categorical: Collection[str] = frozenset(),
        units: Mapping[str, str] | None = None,
    ) -> Preprocessor:
        """Fit every feature on ``data``, which must contain the TRAINING rows only.

        Fitting on validation, test or OOD rows would leak their distribution (medians, ranges, even which
        categories exist) into the model and flatter every evaluation, so callers split first and pass
        the training split here. Missing values (NaN/None) are ignored when fitting; infinities are an
        error because no real measurement is infinite.
        """
        names = list(feature_names)
        if len(set(names)) != len(names):
            raise ValueError("feature_names contains duplicates")
        stray = sorted(set(categorical) - set(names))
        if stray:
            raise ValueError(f"categorical names that are not features: {stray}")
        units = dict(units or {})
        specs: list[FeatureSpec] = []
        for name in names:
            column = get_column(data, name)
            unit = units.get(name, "")
            if name in categorical:
                specs.append(fit_categorical(name, unit, column))
            else:
                specs.append(fit_numeric(name, unit, column))
        return cls(features=specs)

    # ------------------------------------------------------------------ introspection

    @property
    def feature_names(self) -> list[str]:
        """Raw input names, in model order."""
        return [spec.name for spec in self.features]

    @property
    def output_names(self) -> list[str]:
        """Model input column names after one-hot expansion, in column order."""
        return [name for spec in self.features for name in spec.output_names]

    @property
    def numeric_columns(self) -> np.ndarray:
        """Model input columns of the numeric features (int64, in column order); empty when none."""
        return np.array([] if self._numeric is None else self._numeric.cols, dtype=np.int64)

    @property
    def n_outputs(self) -> int:
        """Model input width."""
        return sum(spec.n_outputs for spec in self.features)

    def spec(self, name: str) -> FeatureSpec:
        """The spec of one feature; unknown names raise :class:`PreprocessingError` naming them."""
        try:
            return self._by_name[name]
        except KeyError:
            raise PreprocessingError(f"unknown feature {name!r}", field=name) from None

    # ------------------------------------------------------------------ serving path

    def transform(
        self, rows: Sequence[Mapping[str, Any]], flagged: list[list[str]] | None = None, clip: bool = True
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Transform request rows into a float32 matrix ``(len(rows), n_outputs)``.

        Returns the matrix and, per row, the names of the features that were missing and imputed, in
        feature order; the server reports those so a caller knows which inputs the answer assumed.
        ``flagged``, when given, receives per row (in the same pass) the given numeric values outside
        their plausible range (as :meth:`implausible`) and the categories never seen in training.
        ``clip=False``: scaled but not clipped (the novelty detector's view); :meth:`clip` of that
        matrix is bitwise the clipped one (scaling is monotone, so clipping commutes with it).
        """
        n_rows = len(rows)
        out = np.zeros((n_rows, self._width), dtype=np.float64)
        imputed: list[list[str]] = []
        by_name, plan = self._by_name, self._plan  # locals: pydantic private attributes are slow to read
        for i, row in enumerate(rows):
            try:
                if not isinstance(row, Mapping):
                    raise PreprocessingError(f"row {i} is a {type(row).__name__}, expected a mapping")
                for key in row:
                    if key not in by_name:
                        raise PreprocessingError(f"unknown feature {key!r}", field=str(key))
                filled: list[str] = []
                odd: list[str] = []
                out_i = out[i]
                for spec, offset in plan:
                    value = row.get(spec.name)
                    if spec.kind == "numeric":
                        number = numeric_value(value, spec.name)
                        if number is None:
                            filled.append(spec.name)
                            assert isinstance(spec.impute, (int, float))
                            number = float(spec.impute)
                        elif spec.plausible_low is not None and not spec.is_plausible(number):
                            odd.append(spec.name)
                        out_i[offset] = number  # raw for now; scaled column-wise below
                    else:
                        category = category_value(value, spec.name)
                        if category is None:
                            filled.append(spec.name)
                            assert isinstance(spec.impute, str)
                            category = spec.impute
                        assert spec.categories is not None
                        if category in spec.categories:
                            out_i[offset + spec.categories.index(category)] = 1.0
                        elif value is not None:
                            odd.append(spec.name)
            except PreprocessingError as exc:  # which row: a request of many instances needs to know
                exc.row = i
                raise
            imputed.append(filled)
            if flagged is not None:
                flagged.append(odd)
        return self._scaled(out, clip), imputed

    def transform_matrix(
        self, values: np.ndarray, clip: bool = True
    ) -> tuple[np.ndarray, list[list[str]], list[list[str]]]:
        """:meth:`transform` of a matrix of raw values (an Open Inference Protocol tensor), column ``j``
        feature ``j``: NaN = missing, a categorical value = its category's index.

        Returns the model input, the imputed names and the flagged names per row, bitwise what
        :meth:`transform` gives for the same rows as dicts (tested): the checks and the scaling are the
        same, done column-wise instead of per value. A category index outside the categories, then an
        infinite value, raise :class:`PreprocessingError` at the first such (row, feature).
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.features):
            raise PreprocessingError(f"expected {len(self.features)} columns, got shape {list(values.shape)}")
        p, n_rows = self._matrix, values.shape[0]
        missing = np.isnan(values)
        number, code = values[:, p.num], values[:, p.cat]
        known = (code == np.floor(code)) & (code >= 0) & (code < p.n_categories)  # NaN: False
        bad = None if known.all() else ~missing[:, p.cat] & ~known
        for mask, where in ((bad, p.cat), (np.isinf(number), p.num)):
            if mask is not None and mask.any():
                i, k = (int(v) for v in np.argwhere(mask)[0])  # row-major: the first row, then feature order
                spec = self.features[int(where[k])]
                raise PreprocessingError(
                    f"feature {spec.name!r} is categorical: send a category index "
                    f"0..{len(spec.categories or []) - 1}, got {float(values[i, where[k]])!r}"
                    if where is p.cat
                    else f"feature {spec.name!r} is infinite",
                    field=spec.name,
                    row=i,
                )
        absent = missing[:, p.num]
        odd = (number < p.plausible_low) | (number > p.plausible_high)  # NaN compares False
        np.copyto(number, p.impute, where=absent)  # (a copy: fancy indexing copies)
        out = np.zeros((n_rows, self._width), dtype=np.float64)
        if self._numeric is not None:
            out[:, self._numeric.cols] = self._numeric.scale(number, clip)
        codes = np.where(known, code, p.modes).astype(np.intp)  # missing: the mode
        out[np.arange(n_rows)[:, None], p.cat_offsets + codes] = 1.0
        return _float32(out), _names(missing, p.names), _names(odd, p.num_names)

    def _scaled(self, out: np.ndarray, clip: bool) -> np.ndarray:
        """The raw-valued matrix of :meth:`transform` with its numeric columns scaled, as float32."""
        if self._numeric is not None:
            cols = self._numeric.cols
            out[:, cols] = self._numeric.scale(out[:, cols], clip)
        return _float32(out)

    def clip(self, z: np.ndarray) -> np.ndarray:
        """The network's input from an unclipped matrix (``transform(..., clip=False)``): each numeric
        column clipped to its scaled clipping bounds, along the last axis (so windows work too).

        Bitwise equal to ``transform(..., clip=True)``: ``(v - min) / span`` rounds monotonically in
        ``v``, so clipping before or after scaling selects the same bound (tested).
        """
        if self._scaled_clip is None:
            return z
        b = self._scaled_clip
        lo, hi = (
            (b.low32, b.high32) if z.dtype == np.float32 else (b.low.astype(z.dtype), b.high.astype(z.dtype))
        )
        out = z.copy()
        out[..., b.cols] = np.clip(z.take(b.cols, axis=-1), lo, hi)
        return out

    def implausible_rows(self, z: np.ndarray) -> np.ndarray:
        """(n,) whether any numeric value of an unclipped matrix or window batch (columns on the last
        axis; ``transform_frame(clip=False)``) lies outside its plausible range, on the scaled axis.

        The form calibration, evaluation and the served ``implausible`` reason share; :meth:`implausible`
        (the server's ``flagged`` names) reads raw request values. They agree except on a column that was
        constant in training (scaled to 0 whatever its value, so invisible here; tested as a known
        difference) and within float32 resolution of a bound.
        """
        if self._plausible is None:
            return np.zeros(z.shape[0], dtype=bool)
        b = self._plausible  # precomputed: one vectorised comparison per request
        cols, low, high = b.cols, b.low, b.high
        # compared as float64 whatever z's dtype (numpy promotes against the float64 bounds: exact)
        block = z.take(cols, axis=-1).reshape(z.shape[0], -1, len(cols))
        outside = block < low
        outside |= block > high
        return np.asarray(outside.reshape(z.shape[0], -1).any(axis=1), dtype=bool)

    def implausible(self, row: Mapping[str, Any]) -> list[str]:
        """Numeric features of a request row that lie outside their plausible range.

        Clipping keeps such values from blowing up the network, but a heart rate of 900 is far more likely
        a unit or typing error than a patient, so the server surfaces these names as warnings.
        Non-numeric and missing values are skipped here; :meth:`transform` is what rejects them.
        """
        flagged: list[str] = []
        for spec in self.features:
            if spec.kind != "numeric":
                continue
            try:
                number = numeric_value(row.get(spec.name), spec.name)
            except PreprocessingError:
                continue
            if number is not None and not spec.is_plausible(number):
                flagged.append(spec.name)
        return flagged

    # ------------------------------------------------------------------ training / evaluation path

    def transform_frame(self, data: ColumnSource, clip: bool = True) -> np.ndarray:
        """Vectorised transform of a whole table (DataFrame or dict of columns) to float32.

        Same semantics as :meth:`transform`, except that NaN/None/pd.NA in a column mean "missing" (that
        is how a CSV represents it). Extra columns (e.g. the target) are ignored, because training frames
        carry them; a missing feature column is an error, because it is almost always a loader bug.
        """
        columns: list[np.ndarray] = []
        n_rows: int | None = None
        for spec in self.features:
            raw = get_column(data, spec.name)
            if n_rows is None:
                n_rows = len(raw)
            elif len(raw) != n_rows:
                raise PreprocessingError(
                    f"column {spec.name!r} has {len(raw)} rows, expected {n_rows}", field=spec.name
                )
            if spec.kind == "numeric":
                values = numeric_column(raw, spec.name)
                assert isinstance(spec.impute, (int, float))
                values = np.where(np.isnan(values), float(spec.impute), values)
                columns.append(spec.scale(values, clip)[:, None])
            else:
                assert spec.categories is not None and isinstance(spec.impute, str)
                labels = category_column(raw, spec.name)
                index = {category: j for j, category in enumerate(spec.categories)}
                codes = np.fromiter(
                    (index.get(spec.impute if label is None else label, -1) for label in labels),
                    dtype=np.int64,
                    count=len(labels),
                )
                block = np.zeros((len(labels), len(spec.categories)), dtype=np.float64)
                known = codes >= 0
                block[np.flatnonzero(known), codes[known]] = 1.0
                columns.append(block)
        if not columns:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(columns, axis=1).astype(np.float32)

    # ------------------------------------------------------------------ persistence

    def with_codings(self, codings: Mapping[str, FeatureCoding]) -> Preprocessor:
        """The same preprocessing with clinical codes attached (metadata: no value changes)."""
        stray = sorted(set(codings) - set(self.feature_names))
        if stray:
            raise ValueError(f"codings for names that are not features: {stray}")
        return Preprocessor(
            features=[
                spec.model_copy(update={"coding": codings[spec.name]}) if spec.name in codings else spec
                for spec in self.features
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict for the checkpoint manifest (floats are kept at full precision); features
        without a coding do not write one, so manifests of tasks without codes are unchanged."""
        payload = self.model_dump(mode="json")
        for spec in payload["features"]:
            if spec.get("coding") is None:
                spec.pop("coding", None)
        return payload

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Preprocessor:
        """Rebuild from :meth:`to_dict` output, validating it so a corrupt manifest fails at load time."""
        return cls.model_validate(dict(payload))


# ---------------------------------------------------------------------- helpers


def _float32(out: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # unclipped: beyond float32's range is ±inf (bounded downstream)
        return out.astype(np.float32)


def _names(mask: np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """Per row of ``mask``, the names of its True columns, in column order."""
    out: list[list[str]] = [[] for _ in range(mask.shape[0])]
    if not mask.any():
        return out
    rows, cols = np.nonzero(mask)
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        out[i].append(names[j])
    return out
