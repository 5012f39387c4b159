"""JSON Schemas of one served model's request bodies, generated from its manifest (its input adapter).

The bodies are parsed by hand (``api/body.py``, ``api/v2.py``, ``service/inputs.py``, the model's
``Preprocessor``), so these schemas are written to say what those checks accept, no more: a body the
schema admits is answered (``tests/service/test_openapi.py`` draws them and sends them), and what the
server refuses the schema refuses too wherever JSON Schema can say it. Two things it cannot say are
stated in descriptions instead: the body size limit (``LRBNN_MAX_BODY_BYTES``, 413) and, for V2, that
``shape[0]`` equals the number of rows in ``data`` (a relation between two values; everything else about
the tensor, its name, datatype, the fixed dimensions and each column's type, is in the schema).

Facts the schemas follow (each where the server enforces it):

* numeric feature: a finite number (``true``/``false`` count as 1/0) or null / absent (imputed); an
  implausible value is answered and listed in ``flagged``, so no plausible range is a bound here;
* categorical feature: a training category (the ``enum``) or null; any other scalar is answered as no
  known category and flagged, so the schema admits it as well (a second ``anyOf`` branch);
* an integer (``samples``, ``seed``, ``hour``, ``month``, a shape dimension) may be spelled ``2.0``: JSON
  Schema's ``integer`` admits it, and so does the server.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from model_core.data.features import FeatureSpec
from service.inference import MAX_SEED
from service.inputs import MAX_TEXT_CHARS, InputAdapter, SequenceInput, TextInput
from service.settings import Settings

Schema = dict[str, Any]

#: The largest finite double, as the exact integer it is (written as a decimal, the float's shortest
#: spelling 1.7976931348623157e308 is a smaller number): beyond it a numeric value is refused (an integer
#: literal; a float literal parses to infinity), within it every number is accepted.
MAX_DOUBLE = int(sys.float_info.max)
#: V2 output tensors a request may ask for (``service.api.v2.OUTPUTS``; repeated here to avoid a cycle).
V2_OUTPUTS = ("mean", "variance", "epistemic", "aleatoric", "ood_score", "novelty_score", "ood")


@dataclass(frozen=True)
class Limits:
    """The settings a request is checked against, so the schemas bound what the server bounds."""

    max_instances: int
    max_samples: int
    max_body_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_instances, settings.max_samples, settings.max_body_bytes)


def _number(description: str, nullable: bool = True, boolean: bool = False) -> Schema:
    """A finite number: within the range of a double, which is what the server accepts."""
    types = ["number", *(["boolean"] if boolean else []), *(["null"] if nullable else [])]
    return {"type": types, "minimum": -MAX_DOUBLE, "maximum": MAX_DOUBLE, "description": description}


def _object_or_none(schema: Schema, what: str) -> Schema:
    """An object, or no value: the V2 handler reads ``body.get(key) or {}``, so null and the other empty
    JSON values (false, 0, "", []) mean "none" as well."""
    return {
        "anyOf": [schema, {"enum": [None, False, 0, ""]}, {"type": "array", "maxItems": 0}],
        "description": f'{what}; null (or any empty value: false, 0, "", []) = none',
    }


def _integer(low: int, high: int, description: str, nullable: bool = True) -> Schema:
    types: str | list[str] = ["integer", "null"] if nullable else "integer"
    return {"type": types, "minimum": low, "maximum": high, "description": description}


def feature_schema(spec: FeatureSpec) -> Schema:
    """One named raw feature of a V1 instance (or of one hour of a sequence instance)."""
    unit = f" in {spec.unit}" if spec.unit else ""
    if spec.kind == "numeric":
        return _number(
            f"numeric{unit}; plausible {spec.plausible_low:g} .. {spec.plausible_high:g} (a value outside "
            f"is answered and listed in `flagged`); null or absent: imputed with {spec.impute!r}; "
            "true/false count as 1/0",
            boolean=True,
        )
    return {
        "anyOf": [
            {"enum": [*(spec.categories or []), None], "description": "a training category, or null"},
            {
                "type": ["string", "number", "boolean"],
                "description": "any other value: answered as none of the known categories, listed in "
                "`flagged` (numbers and booleans are compared as text, e.g. 1 as '1')",
            },
        ],
        "description": f"categorical{unit}: one of {spec.categories}; null or absent: imputed with "
        f"{spec.impute!r}",
    }


def features_object(features: list[FeatureSpec], description: str) -> Schema:
    """Named features as an object: every one optional where it can be imputed, no other key."""
    schema: Schema = {
        "type": "object",
        "description": description,
        "properties": {f.name: feature_schema(f) for f in features},
        "additionalProperties": False,
    }
    required = [f.name for f in features if f.impute is None]  # none in practice: all are imputable
    if required:
        schema["required"] = required
    return schema


def _hour_schema(adapter: SequenceInput) -> Schema:
    """One hour of a window: its features, or ``hour``/``month`` instead of their cyclic encodings."""
    hour = features_object(
        adapter.features(), "one hour: the named features (raw units); null or absent = imputed"
    )
    exclusive: list[Schema] = []
    for name, (low, high, _, _) in sorted(adapter.derived.items()):
        hour["properties"][name] = _integer(
            low, high, f"{name} {low}..{high}, instead of {name}_sin/{name}_cos (never with them)"
        )
        encodings = {f"{name}_sin": False, f"{name}_cos": False}
        exclusive.append({"anyOf": [{"properties": {name: False}}, {"properties": encodings}]})
    if exclusive:
        hour["allOf"] = exclusive
    return hour


def instance_schema(adapter: InputAdapter) -> Schema:
    """One V1 instance of the model's input kind."""
    if isinstance(adapter, TextInput):
        return {
            "type": "object",
            "description": f"raw text, any Unicode, at most {MAX_TEXT_CHARS} characters (the model reads the "
            f"first {adapter.tokenizer.max_len - 1} words); an empty text is answered and flagged",
            "properties": {"text": {"type": "string", "maxLength": MAX_TEXT_CHARS}},
            "required": ["text"],
            "additionalProperties": False,
        }
    if isinstance(adapter, SequenceInput):
        return {
            "type": "object",
            "description": f"a window of {adapter.window} hours, oldest first (the forecast is for the hour "
            "after the last one)",
            "properties": {
                adapter.key: {
                    "type": "array",
                    "items": _hour_schema(adapter),
                    "minItems": adapter.window,
                    "maxItems": adapter.window,
                }
            },
            "required": [adapter.key],
            "additionalProperties": False,
        }
    schema = features_object(
        adapter.features(),
        "named raw features; null or absent = not measured (imputed, listed in `imputed`); "
        "an unknown name is refused (422)",
    )
    schema["examples"] = [{f.name: f.impute for f in adapter.features()}]
    return schema


def _samples(default_samples: int, limits: Limits) -> Schema:
    return _integer(1, limits.max_samples, f"Monte Carlo samples S; null or absent: {default_samples}")


def _seed() -> Schema:
    return _integer(0, MAX_SEED, "the same request and seed always give the same answer")


def _body_note(limits: Limits) -> str:
    return f"at most {limits.max_body_bytes} bytes (LRBNN_MAX_BODY_BYTES; more: 413)"


def predict_request(instance_ref: str, default_samples: int, limits: Limits) -> Schema:
    """The V1 predict body; ``instance_ref`` points at :func:`instance_schema` (a component)."""
    return {
        "type": "object",
        "description": f"V1 predict request; {_body_note(limits)}",
        "properties": {
            "instances": {
                "type": "array",
                "items": {"$ref": instance_ref},
                "minItems": 1,
                "maxItems": limits.max_instances,
                "description": f"1..{limits.max_instances} instances (LRBNN_MAX_INSTANCES; more: 413)",
            },
            "parameters": {
                "type": "object",
                "properties": {"samples": _samples(default_samples, limits), "seed": _seed()},
                "additionalProperties": False,
            },
        },
        "required": ["instances"],
        "additionalProperties": False,
    }


def _column(spec: FeatureSpec) -> Schema:
    """One column of a V2 row: the raw number, or for a categorical feature the category's index."""
    if spec.kind == "numeric":
        return _number(f"{spec.name} ({spec.unit or 'raw'}); null = missing (imputed)")
    cats = spec.categories or []
    listing = ", ".join(f"{i} = {c!r}" for i, c in enumerate(cats))
    return _integer(0, len(cats) - 1, f"{spec.name}: category index ({listing}); null = missing (imputed)")


def _row(features: list[FeatureSpec]) -> Schema:
    return {
        "type": "array",
        "prefixItems": [_column(f) for f in features],
        "minItems": len(features),
        "maxItems": len(features),
        "description": "one row, the columns in `parameters.feature_names` order",
    }


def v2_tensor(adapter: InputAdapter, limits: Limits) -> Schema:
    """The one input tensor of a V2 infer request (JSON data; the binary extension is described)."""
    spec = adapter.v2_input()
    n = _integer(1, limits.max_instances, "N: instances (= the rows of `data`)", nullable=False)
    fixed = [{"const": d} for d in spec.shape[1:]]
    rows: Schema
    if isinstance(adapter, TextInput):
        rows = {"type": "string", "maxLength": MAX_TEXT_CHARS}
        form = "N UTF-8 strings"
    elif isinstance(adapter, SequenceInput):
        rows = {
            "type": "array",
            "items": _row(adapter.features()),
            "minItems": adapter.window,
            "maxItems": adapter.window,
        }
        form = f"N windows of {adapter.window} hourly rows"
    else:
        rows = _row(adapter.features())
        form = "N rows"
    return {
        "type": "object",
        "properties": {
            "name": {"enum": [spec.name, *spec.aliases]},
            "datatype": {"enum": ["BYTES"] if spec.datatype == "BYTES" else ["FP32", "FP64"]},
            "shape": {
                "type": "array",
                "prefixItems": [n, *fixed],
                "minItems": len(spec.shape),
                "maxItems": len(spec.shape),
                "description": "[" + ", ".join("N" if d == -1 else str(d) for d in spec.shape) + "]",
            },
            "data": {
                "type": "array",
                "items": rows,
                "minItems": 1,
                "maxItems": limits.max_instances,
                "description": f"{form}; their number must equal shape[0]. The same values flat "
                "(row-major) are accepted too",
            },
            "parameters": {
                "properties": {"binary_data_size": False},
                "description": "tensor parameters (any other value is ignored); `binary_data_size` only with "
                "the binary extension (Inference-Header-Content-Length), never in a JSON-only body",
            },
        },
        "required": ["name", "datatype", "shape", "data"],
    }


def _flag(what: str) -> Schema:
    """A V2 switch: read as a JSON truth value (true, or any non-empty value), so any value is accepted."""
    return {"description": f'true: {what} (any value is read for its truth: 1, "yes" are true too)'}


def v2_infer_request(tensor_ref: str, default_samples: int, limits: Limits) -> Schema:
    """The V2 infer body (Open Inference Protocol); ``tensor_ref`` points at :func:`v2_tensor`."""
    return {
        "type": "object",
        "description": f"Open Inference Protocol request; {_body_note(limits)}. Also accepted: the binary "
        "tensor extension (this JSON as a header of Inference-Header-Content-Length bytes, then the tensor "
        "bytes; `parameters.binary_data_size` on the input)",
        "properties": {
            "id": {"type": ["string", "null"], "description": "echoed in the answer"},
            "inputs": {"type": "array", "items": {"$ref": tensor_ref}, "minItems": 1, "maxItems": 1},
            "outputs": {
                "type": ["array", "null"],
                "description": "default: mean, variance, epistemic, ood_score, novelty_score, ood",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"enum": list(V2_OUTPUTS)},
                        "parameters": _object_or_none(
                            {
                                "type": "object",
                                "properties": {"binary_data": _flag("this output as raw bytes")},
                            },
                            "output parameters",
                        ),
                    },
                    "required": ["name"],
                },
            },
            "parameters": _object_or_none(
                {
                    "type": "object",
                    "properties": {
                        "samples": _samples(default_samples, limits),
                        "seed": _seed(),
                        "binary_data_output": _flag("every output as raw bytes"),
                    },
                },
                "request parameters",
            ),
        },
        "required": ["inputs"],
    }
