"""Open Inference Protocol (KServe V2) REST, so tritonclient / KServe clients work unmodified.

The input is one tensor whose name, datatype and shape depend on the model's input kind
(``service.inputs``; alias ``input__0`` for all): tabular ``features`` FP32 [N, F] (FP64 accepted),
sequence ``window`` FP32 [N, 24, F], text ``text`` BYTES [N]. Numeric columns are in the manifest's
feature order, raw units (preprocessed by the server exactly like V1). A categorical column carries the
index of the category in the metadata's ``categories`` list; null (JSON) or NaN (binary data) marks a
missing value, which is imputed. BYTES elements are UTF-8 strings (JSON) or, as binary data, each a
4-byte little-endian length followed by its bytes. Outputs: ``mean``, ``variance``, ``epistemic``,
``ood_score``, ``novelty_score`` (FP32; NaN for a checkpoint without a novelty detector) and ``ood``
(BOOL, the combined decision), plus ``aleatoric`` on request.

Bodies are parsed from raw bytes (tritonclient sends no ``Content-Type``), including the binary tensor
extension (``Inference-Header-Content-Length``) for inputs and outputs.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from model_core.checkpoint import Task
from service.api.deps import app_state, disconnect_waiter
from service.api.schemas import (
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)
from service.api.v1 import ERRORS, errors_for
from service.api.v2_codec import (
    HEADER_LENGTH,
    OUTPUTS,
    decode_tensor,
    encode_response,
    int_param,
    requested_outputs,
    split_binary,
)
from service.errors import BadRequest, ModelNotFound, ModelNotReady
from service.inference import Tensor
from service.repository import ServedModel
from service.state import AppState, Endpoint, retry_claim

router = APIRouter(tags=["v2 (Open Inference Protocol)"])

SERVER_NAME = "lrbnn"
SERVER_VERSION = "0.1.0"


METADATA_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2ModelMetadata},
    **errors_for(401, 403, 404),
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2ModelReady},
    **errors_for(401, 403, 404, 503),
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": V2InferResponse,
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            }
        },
        "description": "JSON, or with binary outputs the JSON header (Inference-Header-Content-Length "
        "bytes) followed by the raw tensors",
    },
    **ERRORS,
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}}},
    }
}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


@router.get("/v2", summary="Server metadata", responses={200: {"model": V2ServerMetadata}})
async def server_metadata() -> Response:
    return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})


@router.get("/v2/health/live", responses={200: {"model": V2Live}})
async def live() -> Response:
    return _json({"live": True})


@router.get("/v2/health/ready", responses={200: {"model": V2Ready}, 503: {"model": V2Ready}})
async def ready(request: Request) -> Response:
    ok = app_state(request).ready
    return _json({"ready": ok}, 200 if ok else 503)


def _served(request: Request, name: str, version: str | None) -> ServedModel:
    state = app_state(request)
    state.authorize(request)
    return lookup_version(state, name, version)


def lookup_version(state: AppState, name: str, version: str | None) -> ServedModel:
    """The served model ``name``; 404 naming the served version when another ``version`` is asked for."""
    served = state.lookup(name)
    if version and version != served.version:
        raise ModelNotFound(
            f"model {name!r} version {version!r} is not served (serving {served.version})", field="version"
        )
    return served


def metadata(served: ServedModel) -> dict[str, Any]:
    features = served.inputs.features()
    tensor = served.inputs.v2_input()
    outputs = [
        {
            "name": n,
            "datatype": OUTPUTS[n][0],
            "shape": [-1, len(served.manifest.output_schema.labels or [])]
            if n == "mean" and served.manifest.task is Task.MULTICLASS
            else [-1],
        }
        for n in OUTPUTS
    ]
    return {
        "name": served.name,
        "versions": [served.version],
        "platform": f"lrbnn_{served.runtime.device}",
        "inputs": [{"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}],
        "outputs": outputs,
        "parameters": {
            "input": served.inputs.description(),
            "feature_names": [f.name for f in features],
            "categories": {f.name: f.categories for f in features if f.kind == "categorical"},
            "units": {f.name: f.unit for f in features},
            "default_samples": served.default_samples,
            "ood_threshold": served.ood_threshold,
        },
    }


@router.get("/v2/models/{name}", summary="Model metadata", responses=METADATA_RESPONSES)
@router.get(
    "/v2/models/{name}/versions/{version}",
    summary="Model metadata (one version)",
    responses=METADATA_RESPONSES,
)
async def model_metadata(name: str, request: Request, version: str | None = None) -> Response:
    return _json(metadata(_served(request, name, version)))


@router.get("/v2/models/{name}/ready", responses=READY_RESPONSES)
@router.get("/v2/models/{name}/versions/{version}/ready", responses=READY_RESPONSES)
async def model_ready(name: str, request: Request, version: str | None = None) -> Response:
    served = _served(request, name, version)
    state = app_state(request)
    if state.draining:
        raise ModelNotReady("the server is shutting down", retry_after_s=1)
    if not state.inference.attached(served.name):  # loaded, not yet answering: ready means answering
        raise ModelNotReady(f"model {name!r} is still loading", retry_after_s=1)
    return _json({"name": served.name, "version": served.version, "ready": True})


# -- infer ------------------------------------------------------------------------------------
@router.post(
    "/v2/models/{name}/infer",
    summary="Inference (Open Inference Protocol)",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    state = app_state(request)
    async with state.track(request, name, Endpoint.V2_INFER) as served:
        if version is not None and version != served.version:
            raise ModelNotFound(f"model {name!r} version {version!r} is not served", field="version")
        body, binary = split_binary(request.headers.get(HEADER_LENGTH), await request.body())
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object", field="body")
        x = decode_tensor(body, binary, served.inputs.v2_input())
        request.state.instances = int(x.shape[0])
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest("'parameters' must be an object", field="parameters")
        samples, seed = int_param(params, "samples"), int_param(params, "seed")
        requested = requested_outputs(body)  # checked before the compute, not after
        if body.get("id") is not None and not isinstance(body["id"], str):
            raise BadRequest("'id' must be a string", field="id")
        result = await state.inference.predict(
            served, Tensor(x), samples, seed, disconnect_waiter(request), retry_claim()
        )
        return encode_response(result, body, requested)
