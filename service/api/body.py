"""Request bodies parsed from raw bytes: no reliance on ``Content-Type`` (tritonclient sends none).

Invalid UTF-8 and invalid JSON are 400s naming the body; a schema mismatch is a 422 naming the first
offending field in dotted form (``parameters.samples``, ``instances.0``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from service.errors import BadRequest, InvalidInput

M = TypeVar("M", bound=BaseModel)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise BadRequest("the request body is empty; expected a JSON object", field="body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON (UTF-8): {exc}", field="body") from None


def validate(model: type[M], payload: Any) -> M:
    if not isinstance(payload, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(payload).__name__}", field="body")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None
