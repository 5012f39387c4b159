"""``/openapi.json``: FastAPI's routes, with one predict and infer operation per served model, each with
that model's own request body schema (``service.api.request_schemas``), so schema-valid means accepted.

Why per model: a body is only valid for a given model (its features, their types and categories; a
window of hours; a text), so the generic ``POST /v1/models/{name}:predict`` could only document a body
that is right for no model in particular: requests valid by it were refused (an unknown feature), and
a client generated from the document learnt nothing of a model's features. The three templates that
carry a model's body (``/v1/models/{name}:predict``, ``/v2/models/{name}/infer`` and
``/v2/models/{name}/versions/{version}/infer``) are therefore listed as concrete paths, one per served
model (``/v1/models/icu-mortality:predict``, ``/v2/models/icu-mortality/versions/1/infer``, ...).

Why the generic templates are not kept beside them: for a served name their body would be untrue (as
above), and for any other name every request is answered 404 whatever it carries, so the only truthful
generic operation would be "always 404", which a generated client turns into a method that can never
succeed. The server still answers an unknown name 404; the document lists what can be answered. The
model routes without a model-specific body (V2 metadata and ready, reload) keep their ``{name}``
template, with their 404 for an unknown name documented.

What is served changes (the models attach once loaded, a reload swaps a version in), so the document is
rebuilt whenever the served set does: it is cached under each served model's name, version, weights
digest and input adapter. While the models load no per-model operation is listed yet, and the document
is still valid.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.request_schemas import (
    Limits,
    instance_schema,
    predict_request,
    v2_infer_request,
    v2_tensor,
)
from service.api.schemas import FeedbackRequest, PredictRequest, V2InferRequest
from service.repository import ServedModel

#: the route templates whose body depends on the model -> the protocol of that body
MODEL_ROUTES: dict[str, str] = {
    "/v1/models/{name}:predict": "v1",
    "/v2/models/{name}/infer": "v2",
    "/v2/models/{name}/versions/{version}/infer": "v2",
}
REF = "#/components/schemas/"
NOTHING_SERVED = (
    " No model is served yet (still loading, or none could be loaded): the predict and infer operations, "
    "one per served model with its own request schema, are listed once they are."
)


def base_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the hand-parsed generic request bodies (parsed from raw bytes, see
    ``api/body``), without FastAPI's 422 ``HTTPValidationError``, which no route can answer."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (PredictRequest, V2InferRequest, FeedbackRequest):
        body = model.model_json_schema(ref_template=REF + "{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    # No route takes FastAPI-validated parameters (bodies are parsed by hand, path parameters are
    # plain strings), so FastAPI's automatic 422 (HTTPValidationError) can never be answered: drop it.
    for methods in schema.get("paths", {}).values():
        for op in methods.values():
            answer = op.get("responses", {}).get("422", {})
            ref = answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            if ref.endswith("/HTTPValidationError"):
                del op["responses"]["422"]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def model_components(served: ServedModel, limits: Limits) -> dict[str, dict[str, Any]]:
    """The request schemas of one model, as components named ``<model>.<Schema>``."""
    name = served.name
    return {
        f"{name}.Instance": instance_schema(served.inputs),
        f"{name}.PredictRequest": predict_request(f"{REF}{name}.Instance", served.default_samples, limits),
        f"{name}.V2Input": v2_tensor(served.inputs, limits),
        f"{name}.V2InferRequest": v2_infer_request(f"{REF}{name}.V2Input", served.default_samples, limits),
    }


def _operation(generic: dict[str, Any], served: ServedModel, protocol: str, op_id: str) -> dict[str, Any]:
    """The generic template's operation for one model: no path parameters, the model's own body."""
    op = copy.deepcopy(generic)
    op["operationId"] = op_id
    op["summary"] = f"{generic.get('summary', op_id)}: {served.name} ({served.inputs.kind.value})"
    params = [p for p in op.pop("parameters", []) if p.get("in") != "path"]
    for p in params:
        if p.get("in") == "query" and p.get("name") == "version":  # the unversioned V2 route's query
            p["schema"] = {"type": "string", "enum": [served.version]}
            p["description"] = "optional; only the served version (any other: 404)"
    if params:
        op["parameters"] = params
    body = f"{served.name}.{'PredictRequest' if protocol == 'v1' else 'V2InferRequest'}"
    op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": REF + body}}}}
    return op


def build_document(base: dict[str, Any], served: Sequence[ServedModel], limits: Limits) -> dict[str, Any]:
    """``base`` with each body-carrying model template replaced by one concrete path per served model."""
    doc = copy.deepcopy(base)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in served:
        components.update(model_components(model, limits))
    if "FeedbackRequest" in components:  # bounded as the server bounds it (413 beyond)
        components["FeedbackRequest"]["properties"]["outcomes"]["maxItems"] = limits.max_instances
    if not served:
        doc["info"]["description"] = doc["info"].get("description", "") + NOTHING_SERVED
    taken = {op.get("operationId") for ops in doc["paths"].values() for op in ops.values()}
    paths: dict[str, Any] = {}
    for template, ops in doc["paths"].items():
        protocol = MODEL_ROUTES.get(template)
        if protocol is None:
            paths[template] = ops
            continue
        for model in served:
            concrete = template.replace("{name}", model.name).replace("{version}", model.version)
            paths[concrete] = {
                method: _operation(op, model, protocol, _unique(f"{op['operationId']}__{model.name}", taken))
                for method, op in ops.items()
            }
    doc["paths"] = paths
    return doc


def _unique(wanted: str, taken: set[Any]) -> str:
    op_id = re.sub(r"[^A-Za-z0-9_]", "_", wanted)
    candidate, n = op_id, 1
    while candidate in taken:
        n += 1
        candidate = f"{op_id}_{n}"
    taken.add(candidate)
    return candidate


class OpenAPIDocument:
    """``app.openapi``: the document of what is served now, rebuilt only when that changes."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._base: tuple[int, dict[str, Any]] | None = None
        self._key: tuple[Any, ...] | None = None
        self._doc: dict[str, Any] | None = None
        #: the served models the cached document describes (held so no ``id`` in the key is reused)
        self._served: list[ServedModel] = []

    def _base_document(self) -> dict[str, Any]:
        routes = len(self.app.routes)  # a route added after the first build (tests do) is included
        if self._base is None or self._base[0] != routes:
            self._base = (routes, base_document(self.app))
        return self._base[1]

    def __call__(self) -> dict[str, Any]:
        state = self.app.state.lrbnn
        served = [s for s in state.repository.models() if state.inference.attached(s.name)]
        key = (
            len(self.app.routes),
            tuple((s.name, s.version, s.manifest.sha256, id(s.inputs)) for s in served),
        )
        if self._doc is None or key != self._key:
            self._doc = build_document(self._base_document(), served, Limits.of(state.settings))
            self._key, self._served = key, served
            self.app.openapi_schema = self._doc
        return self._doc
