"""Input kinds the server accepts, one adapter per manifest ``input_schema.kind`` (no torch here).

Every adapter turns V1 instances (JSON objects), or its Open Inference Protocol tensor, into the model's
input array, and reports what it imputed and what looks implausible (both inputs give bitwise the same
answer for the same values):

=========  ===========================================  ==============================================
kind       V1 instance                                  V2 input tensor
=========  ===========================================  ==============================================
tabular    ``{"age": 70, "sex": "male", ...}``          ``features`` FP32 [N, F] (category = index)
sequence   ``{"hours": [{"pm2.5": 80, ...}, ... ×24]}``  ``window`` FP32 [N, 24, F] (same per hour)
text       ``{"text": "a gripping, funny film"}``       ``text`` BYTES [N]
=========  ===========================================  ==============================================

Sequence hours are oldest first (the forecast is for the hour after the last one). Each hour is a
tabular row of the manifest's per-hour preprocessing; ``hour`` (0..23) and ``month`` (1..12) may be
sent instead of their cyclic encodings (``hour_sin`` ...), which the server derives exactly as training
did. A missing PM2.5 reading is forward-filled from the last earlier hour (the training policy) and
otherwise imputed. Names in ``imputed``/``flagged`` are ``hours[i].feature``.

Text is tokenised by the checkpoint's own word tokenizer (fitted on the training split); texts longer
than :data:`MAX_TEXT_CHARS` characters are refused rather than silently truncated by the client's
ignorance (the model reads the first ``max_len - 1`` words).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from model_core.checkpoint.manifest import FeatureDistribution, InputSchema
from model_core.data.features import FeatureSpec
from model_core.data.preprocessing import Preprocessor
from model_core.data.tokenizer import WordTokenizer
from model_core.data.values import PreprocessingError
from model_core.feature_reference import FeatureBinner
from service.api.body import whole_number
from service.errors import InvalidInput

#: Longest text (characters) one instance may carry: 20x the longest review snippet of the training data.
MAX_TEXT_CHARS = 10_000

#: Raw time fields a sequence hour may carry instead of their cyclic encodings: name -> (low, high, period
#: offset, period) with encoding angle 2*pi*(value - offset)/period.
TIME_FIELDS: dict[str, tuple[int, int, int, int]] = {"hour": (0, 23, 0, 24), "month": (1, 12, 1, 12)}


class InputKind(str, Enum):
    TABULAR = "tabular"
    SEQUENCE = "sequence"
    TEXT = "text"


@dataclass(frozen=True)
class Encoded:
    """The model input for a list of instances, with per-instance imputed and flagged names.

    ``z`` is what the novelty detector scores: the scaled input before clipping (clipping hides a unit
    error from the network and would hide it from the detector too), or the token ids of a text.
    ``implausible`` marks the instances with a numeric value outside its plausible range, computed on
    ``z`` exactly as at calibration (``Preprocessor.implausible_rows``); None for text.
    """

    x: np.ndarray
    imputed: list[list[str]]
    flagged: list[list[str]]
    z: np.ndarray
    implausible: np.ndarray | None


@dataclass(frozen=True)
class TensorSpec:
    """One V2 input tensor: its name, datatype and shape (-1 = the instance axis)."""

    name: str
    datatype: str
    shape: list[int]
    aliases: tuple[str, ...] = ()


def _instance_path(row: int) -> str:
    return f"instances.{row}"


def _tensor_row(row: int) -> str:
    """Row ``row`` of the V2 input tensor in the request."""
    return f"inputs.0.data.{row}"


def _checked_text(text: Any, where: str) -> str:
    """A text instance's value, ``where`` its request field."""
    if not isinstance(text, str):
        raise InvalidInput(f"{where} must be a string, got {type(text).__name__}", field=where)
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{where} has {len(text)} characters; at most {MAX_TEXT_CHARS}", field=where)
    return text


def _invalid(exc: PreprocessingError, row_path: Callable[[int], str]) -> InvalidInput:
    """The field of a preprocessing error: the row's path, then the feature, e.g. ``instances.1.age``."""
    where = "instances" if exc.row is None else row_path(exc.row)
    return InvalidInput(str(exc), field=where if exc.field is None else f"{where}.{exc.field}")


def _overflowing(row: Mapping[str, Any]) -> str:
    for key, value in row.items():
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                return str(key)
    return "?"


def _transform(
    pre: Preprocessor,
    rows: Sequence[Mapping[str, Any]],
    flagged: list[list[str]],
    row_path: Callable[[int], str] = _instance_path,
) -> tuple[np.ndarray, list[list[str]]]:
    """``pre.transform`` (unclipped: the caller clips with ``pre.clip``) with errors naming the request
    field; ``row_path`` maps a row index to its path in the request (a tabular row is an instance; a
    sequence row is one hour of an instance)."""
    try:
        return pre.transform(rows, flagged, clip=False)
    except PreprocessingError as exc:
        raise _invalid(exc, row_path) from None
    except OverflowError:  # an integer literal beyond float range (JSON allows any size)
        i, name = next(((i, n) for i, n in enumerate(_overflowing(r) for r in rows) if n != "?"), (0, "?"))
        raise InvalidInput(
            f"feature {name!r} is out of range (an integer beyond the float range)",
            field=f"{row_path(i)}.{name}",
        ) from None


class InputAdapter(ABC):
    kind: InputKind
    #: whether the prediction store may keep ``Encoded.z`` (scaled numbers and category codes); never a
    #: text's token ids, from which the free text could be read back
    stores_features: bool = True

    def feature_binner(self, refs: list[FeatureDistribution]) -> FeatureBinner | None:
        """The binning of per-feature drift (tabular inputs only; None: this kind has none)."""
        return None

    @abstractmethod
    def encode(self, instances: Sequence[Mapping[str, Any]]) -> Encoded:
        """Validate and transform V1 instances; :class:`InvalidInput` names the offending field."""

    @abstractmethod
    def warmup_instances(self) -> list[dict[str, Any]]:
        """One instance that needs no client data (all imputed / empty): the start-up self-test."""

    @abstractmethod
    def v2_input(self) -> TensorSpec: ...

    @abstractmethod
    def encode_tensor(self, tensor: np.ndarray) -> Encoded:
        """A decoded V2 input tensor (``v2_input``'s shape) -> the model input: the same checks as
        :meth:`encode` and bitwise its result for the same instances sent as V1 objects (tested)."""

    @abstractmethod
    def features(self) -> list[FeatureSpec]:
        """The named raw features a client sends (for model metadata); empty for text."""

    def description(self) -> dict[str, Any]:
        """Kind-specific facts for the model metadata (window length, tokenizer size, ...)."""
        return {"kind": self.kind.value}


class TabularInput(InputAdapter):
    kind = InputKind.TABULAR

    def __init__(self, schema: InputSchema) -> None:
        self.pre = Preprocessor.from_dict(schema.preprocessing)

    def encode(self, instances: Sequence[Mapping[str, Any]]) -> Encoded:
        flagged: list[list[str]] = []
        z, imputed = _transform(self.pre, instances, flagged)
        return Encoded(self.pre.clip(z), imputed, flagged, z, self.pre.implausible_rows(z))

    def warmup_instances(self) -> list[dict[str, Any]]:
        return [{}]

    def feature_binner(self, refs: list[FeatureDistribution]) -> FeatureBinner | None:
        return FeatureBinner.tabular(self.pre, refs)

    def v2_input(self) -> TensorSpec:
        return TensorSpec("features", "FP32", [-1, len(self.pre.features)], aliases=("input__0",))

    def encode_tensor(self, tensor: np.ndarray) -> Encoded:
        try:
            z, imputed, flagged = self.pre.transform_matrix(tensor, clip=False)
        except PreprocessingError as exc:
            raise _invalid(exc, _tensor_row) from None
        return Encoded(self.pre.clip(z), imputed, flagged, z, self.pre.implausible_rows(z))

    def features(self) -> list[FeatureSpec]:
        return list(self.pre.features)


class SequenceInput(InputAdapter):
    kind = InputKind.SEQUENCE
    key = "hours"

    def __init__(self, schema: InputSchema) -> None:
        self.pre = Preprocessor.from_dict(schema.preprocessing)
        extra = schema.model_extra or {}
        self.window = int(extra.get("window", 24))
        names = set(self.pre.feature_names)
        target = str(extra.get("target", ""))
        #: the series forward-filled when missing (the training policy), if the model reads it
        self.fill_forward: str | None = target if target in names else None
        self.derived = {f: TIME_FIELDS[f] for f in TIME_FIELDS if {f"{f}_sin", f"{f}_cos"} <= names}

    def _hour_rows(self, instance: Mapping[str, Any], i: int) -> list[tuple[dict[str, Any], bool]]:
        """The instance's hourly rows, each with whether its target reading was carried forward."""
        hours = instance.get(self.key) if isinstance(instance, Mapping) else None
        if not isinstance(instance, Mapping) or set(instance) - {self.key}:
            extra = sorted(set(instance) - {self.key}) if isinstance(instance, Mapping) else None
            raise InvalidInput(
                f"instance {i} must be an object with only {self.key!r}"
                + (f"; unknown key(s) {extra}" if extra else ""),
                field=f"instances.{i}",
            )
        if not isinstance(hours, list) or len(hours) != self.window:
            got = f"{len(hours)} entries" if isinstance(hours, list) else type(hours).__name__
            raise InvalidInput(
                f"instances.{i}.{self.key} must be a list of {self.window} hourly objects "
                f"(oldest first), got {got}",
                field=f"instances.{i}.{self.key}",
            )
        rows: list[tuple[dict[str, Any], bool]] = []
        last_target: Any = None
        for t, hour in enumerate(hours):
            where = f"instances.{i}.{self.key}.{t}"
            if not isinstance(hour, Mapping):
                raise InvalidInput(f"{where} must be an object of features", field=where)
            row = dict(hour)
            for name, (low, high, offset, period) in self.derived.items():
                if name not in row:
                    continue
                if f"{name}_sin" in row or f"{name}_cos" in row:
                    raise InvalidInput(
                        f"{where}: send {name!r} or its encodings, not both", field=f"{where}.{name}"
                    )
                value = row.pop(name)
                if value is None:
                    continue
                value = whole_number(value)  # 3.0 is JSON Schema's integer 3 too
                if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                    raise InvalidInput(
                        f"{where}.{name} must be an integer {low}..{high}, got {value!r}",
                        field=f"{where}.{name}",
                    )
                angle = 2.0 * math.pi * (value - offset) / period
                row[f"{name}_sin"], row[f"{name}_cos"] = math.sin(angle), math.cos(angle)
            filled = False
            if self.fill_forward is not None:
                if row.get(self.fill_forward) is None and last_target is not None:
                    row[self.fill_forward] = last_target
                    filled = True
                elif row.get(self.fill_forward) is not None:
                    last_target = row[self.fill_forward]
            rows.append((row, filled))
        return rows

    def encode(self, instances: Sequence[Mapping[str, Any]]) -> Encoded:
        flat: list[dict[str, Any]] = []
        forward: list[bool] = []
        for i, instance in enumerate(instances):
            for row, carried in self._hour_rows(instance, i):
                forward.append(carried)
                flat.append(row)
        flagged: list[list[str]] = []
        window, key = self.window, self.key
        z, imputed = _transform(
            self.pre, flat, flagged, lambda k: f"instances.{k // window}.{key}.{k % window}"
        )
        return self._windows(len(instances), z, imputed, flagged, forward)

    def encode_tensor(self, tensor: np.ndarray) -> Encoded:
        n, window = int(tensor.shape[0]), self.window
        values = np.array(tensor, dtype=np.float64)  # a copy: the forward fill writes into it
        carried = np.zeros((n, window), dtype=bool)
        if self.fill_forward is not None:  # as _hour_rows: a gap takes the last earlier reading
            series = values[:, :, self.pre.feature_names.index(self.fill_forward)]
            for t in range(1, window):
                gap = np.isnan(series[:, t]) & ~np.isnan(series[:, t - 1])
                series[gap, t] = series[gap, t - 1]
                carried[:, t] = gap
        try:
            z, imputed, flagged = self.pre.transform_matrix(values.reshape(n * window, -1), clip=False)
        except PreprocessingError as exc:
            raise _invalid(exc, lambda k: f"{_tensor_row(k // window)}.{k % window}") from None
        return self._windows(n, z, imputed, flagged, carried.ravel().tolist())

    def _windows(
        self,
        n: int,
        z_flat: np.ndarray,
        imputed_flat: list[list[str]],
        flagged_flat: list[list[str]],
        forward: Sequence[bool],
    ) -> Encoded:
        """Per-hour results (flat row ``k``: instance ``k // window``, hour ``k % window``) -> per-instance
        names ``hours[t].feature`` (a carried-forward reading listed after the imputed ones) and windows."""
        imputed: list[list[str]] = []
        flagged: list[list[str]] = []
        for i in range(n):
            names_i: list[str] = []
            flags_i: list[str] = []
            for t in range(self.window):
                k = i * self.window + t
                filled = imputed_flat[k] + ([self.fill_forward] if forward[k] and self.fill_forward else [])
                names_i += [f"hours[{t}].{n}" for n in filled]
                flags_i += [f"hours[{t}].{n}" for n in flagged_flat[k]]
            imputed.append(names_i)
            flagged.append(flags_i)
        z = z_flat.reshape(n, self.window, -1)
        return Encoded(self.pre.clip(z), imputed, flagged, z, self.pre.implausible_rows(z))

    def warmup_instances(self) -> list[dict[str, Any]]:
        return [{self.key: [{} for _ in range(self.window)]}]

    def feature_binner(self, refs: list[FeatureDistribution]) -> FeatureBinner | None:
        return FeatureBinner.sequence(self.pre, refs)

    def v2_input(self) -> TensorSpec:
        return TensorSpec("window", "FP32", [-1, self.window, len(self.pre.features)], aliases=("input__0",))

    def features(self) -> list[FeatureSpec]:
        return list(self.pre.features)

    def description(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "window": self.window,
            "key": self.key,
            "order": "oldest hour first; the forecast is for the hour after the last one",
            "raw_time_fields": sorted(self.derived),
        }


class TextInput(InputAdapter):
    kind = InputKind.TEXT
    stores_features = False
    key = "text"

    def __init__(self, schema: InputSchema) -> None:
        self.tokenizer = WordTokenizer.from_dict(schema.preprocessing)

    def _text(self, instance: Mapping[str, Any], i: int) -> str:
        if not isinstance(instance, Mapping) or set(instance) != {self.key}:
            raise InvalidInput(
                f"instance {i} must be an object with exactly one key {self.key!r}", field=f"instances.{i}"
            )
        return _checked_text(instance[self.key], f"instances.{i}.{self.key}")

    def encode(self, instances: Sequence[Mapping[str, Any]]) -> Encoded:
        return self._encode([self._text(instance, i) for i, instance in enumerate(instances)])

    def encode_tensor(self, tensor: np.ndarray) -> Encoded:
        return self._encode([_checked_text(t, _tensor_row(i)) for i, t in enumerate(tensor.tolist())])

    def _encode(self, texts: list[str]) -> Encoded:
        ids, _ = self.tokenizer.encode(texts)
        flagged = [["text"] if not t.strip() else [] for t in texts]  # an empty text says nothing
        return Encoded(ids, [[] for _ in texts], flagged, ids, None)

    def warmup_instances(self) -> list[dict[str, Any]]:
        return [{self.key: ""}]

    def feature_binner(self, refs: list[FeatureDistribution]) -> FeatureBinner | None:
        return FeatureBinner.text(refs)

    def v2_input(self) -> TensorSpec:
        return TensorSpec("text", "BYTES", [-1], aliases=("input__0",))

    def features(self) -> list[FeatureSpec]:
        return []

    def description(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "key": self.key,
            "max_chars": MAX_TEXT_CHARS,
            "max_tokens": self.tokenizer.max_len,
            "vocab_size": self.tokenizer.vocab_size,
        }


#: ``input_schema.kind`` -> adapter class (a registry, so a new kind is one entry).
ADAPTERS: dict[InputKind, Callable[[InputSchema], InputAdapter]] = {
    InputKind.TABULAR: TabularInput,
    InputKind.SEQUENCE: SequenceInput,
    InputKind.TEXT: TextInput,
}


def build_adapter(schema: InputSchema) -> InputAdapter:
    """The adapter of a manifest's input schema; ValueError names what is wrong with it."""
    return ADAPTERS[InputKind(schema.kind)](schema)
