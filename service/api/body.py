"""Request bodies parsed from raw bytes: no reliance on ``Content-Type`` (tritonclient sends none).

Invalid UTF-8 and invalid JSON are 400s naming the body (NaN / Infinity literals are parsed so that the
feature holding them can be named); a schema mismatch is a 422 naming the first
offending field in dotted form (``parameters.samples``, ``instances.0``).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from service.errors import BadRequest, InvalidInput

M = TypeVar("M", bound=BaseModel)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object kept as its (key, value) pairs, to locate a duplicate key (slow path only)."""


def _duplicate_path(node: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for key, value in node:
            if key in seen:
                return (*path, key)
            seen.add(key)
            found = _duplicate_path(value, (*path, key))
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _duplicate_path(value, (*path, str(i)))
            if found:
                return found
    return None


def _has_lone_surrogate(node: Any) -> bool:
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(node, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in node.items())
    if isinstance(node, list):
        return any(_has_lone_surrogate(v) for v in node)
    return False


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys (a feature given twice is ambiguous), no lone surrogates.

    The NaN / Infinity literals (and 1e999, which overflows to infinity) that many clients emit are
    parsed, so that the preprocessor can refuse them naming the feature; so are integers of any size,
    refused later naming their field.
    """
    if not raw.strip():
        raise BadRequest("the request body is empty; expected a JSON object", field="body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not valid UTF-8: {exc}", field="body") from None
    try:
        payload = json.loads(text, object_pairs_hook=_unique_object)
    except _DuplicateKey as exc:
        path = _duplicate_path(json.loads(text, object_pairs_hook=_Pairs)) or (exc.key,)
        field = ".".join(path)  # e.g. instances.1.age: the instance and the key, as other errors name them
        raise InvalidInput(f"duplicate key {exc.key!r} in a JSON object ({field})", field=field) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(f"the request body is not valid JSON: {exc}", field="body") from None
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(payload):
        raise BadRequest("the request body holds a lone UTF-16 surrogate (invalid Unicode)", field="body")
    return payload


def whole_number(value: Any) -> Any:
    """An integral float as its int, anything else unchanged; a pydantic ``BeforeValidator`` too.

    ``2.0`` counts as ``2``: JSON does not tell them apart, and JSON Schema's ``integer``, which the
    OpenAPI document promises for ``samples``, ``seed``, shape dimensions and ``hour``/``month``, admits
    it. ``2.5``, ``true`` and ``"2"`` are left for the strict integer checks to refuse.
    """
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def json_int(value: Any) -> int | None:
    """``value`` as an int when it is an integer JSON number (see :func:`whole_number`), else None."""
    number = whole_number(value)
    return number if type(number) is int else None


def validate(model: type[M], payload: Any) -> M:
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise BadRequest(f"the request body must be a JSON object, got {kind}", field="body")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None
