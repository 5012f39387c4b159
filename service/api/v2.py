"""Open Inference Protocol (KServe V2) REST, so tritonclient / KServe clients work unmodified.

The input is one tensor ``features`` (alias ``input__0``) of shape [N, F], FP32 (FP64 accepted), columns
in the manifest's feature order, raw units (preprocessed by the server exactly like V1). A categorical
column carries the index of the category in the metadata's ``categories`` list; null (JSON) or NaN
(binary data) marks a missing value, which is imputed. Outputs: ``mean``, ``variance``, ``epistemic``,
``ood_score`` (FP32) and ``ood`` (BOOL), plus ``aleatoric`` on request.

Bodies are parsed from raw bytes (tritonclient sends no ``Content-Type``), including the binary tensor
extension (``Inference-Header-Content-Length``) for inputs and outputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from model_core.checkpoint import Task
from service.api.body import parse_json
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
from service.errors import BadRequest, InvalidInput, ModelNotFound, ModelNotReady
from service.inference import InferenceResult
from service.repository import ServedModel
from service.state import Endpoint

router = APIRouter(tags=["v2 (Open Inference Protocol)"])

INPUT_NAMES = ("features", "input__0")
DTYPES: dict[str, type[np.generic]] = {"FP32": np.float32, "FP64": np.float64}
#: Output name -> (datatype, numpy dtype); the default set is the contract's.
OUTPUTS: dict[str, tuple[str, type[np.generic]]] = {
    "mean": ("FP32", np.float32),
    "variance": ("FP32", np.float32),
    "epistemic": ("FP32", np.float32),
    "aleatoric": ("FP32", np.float32),
    "ood_score": ("FP32", np.float32),
    "ood": ("BOOL", np.bool_),
}
DEFAULT_OUTPUTS = ("mean", "variance", "epistemic", "ood_score", "ood")
HEADER_LENGTH = "inference-header-content-length"
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
    served = state.repository.get(name)
    if version is not None and version != served.version:
        raise ModelNotFound(
            f"model {name!r} version {version!r} is not served (serving {served.version})", field="version"
        )
    return served


def metadata(served: ServedModel) -> dict[str, Any]:
    pre = served.preprocessor
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
        "inputs": [{"name": INPUT_NAMES[0], "datatype": "FP32", "shape": [-1, len(pre.feature_names)]}],
        "outputs": outputs,
        "parameters": {
            "feature_names": pre.feature_names,
            "categories": {s.name: s.categories for s in pre.features if s.kind == "categorical"},
            "units": {s.name: s.unit for s in pre.features},
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
    if app_state(request).draining:
        raise ModelNotReady("the server is shutting down", retry_after_s=1)
    return _json({"name": served.name, "version": served.version, "ready": True})


# -- infer ------------------------------------------------------------------------------------
def _split_binary(request: Request, raw: bytes) -> tuple[Any, bytes]:
    header = request.headers.get(HEADER_LENGTH)
    if header is None:
        return parse_json(raw), b""
    try:
        n = int(header)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} is not an integer: {header!r}", field=HEADER_LENGTH) from None
    if not 0 < n <= len(raw):
        raise BadRequest(f"{HEADER_LENGTH}={n} does not fit a {len(raw)}-byte body", field=HEADER_LENGTH)
    return parse_json(raw[:n]), raw[n:]


def _int_param(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"parameters.{key} must be an integer, got {value!r}", field=f"parameters.{key}")
    return value


def _tensor(body: dict[str, Any], binary: bytes, n_features: int) -> np.ndarray:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("'inputs' must be a list holding exactly one tensor", field="inputs")
    spec = inputs[0]
    name = spec.get("name")
    if name not in INPUT_NAMES:
        raise BadRequest(f"unknown input {name!r}; expected {INPUT_NAMES[0]!r}", field="inputs.0.name")
    datatype = spec.get("datatype")
    if datatype not in DTYPES:
        raise BadRequest(
            f"input {name!r}: datatype {datatype!r} is not supported; send FP32", field="inputs.0.datatype"
        )
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[1] != n_features
        or shape[0] < 0
    ):
        raise BadRequest(
            f"input {name!r}: shape must be [N, {n_features}], got {shape!r}", field="inputs.0.shape"
        )
    count = shape[0] * shape[1]
    dtype = DTYPES[datatype]
    params = spec.get("parameters") or {}
    if isinstance(params, dict) and "binary_data_size" in params:
        size = params["binary_data_size"]
        want = count * np.dtype(dtype).itemsize
        if size != want or len(binary) < want:
            raise BadRequest(
                f"input {name!r}: binary_data_size {size!r} must be {want} bytes for shape {shape}, "
                f"with that many bytes after the JSON header (got {len(binary)})",
                field="inputs.0.parameters.binary_data_size",
            )
        return np.frombuffer(binary[:want], dtype=dtype).astype(np.float64).reshape(shape)
    data = spec.get("data")
    if data is None:
        raise BadRequest(f"input {name!r} has no 'data'", field="inputs.0.data")
    flat = np.asarray(data, dtype=object).ravel() if isinstance(data, list) else None
    if flat is None or flat.size != count:
        got = "not a list" if flat is None else f"{flat.size} values"
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values, got {got}", field="inputs.0.data"
        )
    values = np.empty(count, dtype=np.float64)
    for i, v in enumerate(flat.tolist()):
        if v is None:
            values[i] = math.nan
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                values[i] = v
            except OverflowError:  # an integer literal beyond float range
                raise BadRequest(
                    f"input {name!r}: element {i} is out of range", field="inputs.0.data"
                ) from None
        else:
            raise BadRequest(
                f"input {name!r}: element {i} is {v!r}, not a number or null", field="inputs.0.data"
            )
    return values.reshape(shape)


def _rows(served: ServedModel, x: np.ndarray) -> list[dict[str, Any]]:
    """Tensor rows -> V1-style named rows (NaN = missing; categorical = category index)."""
    specs = served.preprocessor.features
    rows: list[dict[str, Any]] = []
    for values in x.tolist():
        row: dict[str, Any] = {}
        for spec, v in zip(specs, values, strict=True):
            if math.isnan(v):
                continue
            if spec.kind == "categorical":
                cats = spec.categories or []
                if not (v.is_integer() and 0 <= v < len(cats)):
                    raise InvalidInput(
                        f"feature {spec.name!r} is categorical: send a category index 0..{len(cats) - 1}, "
                        f"got {v!r}",
                        field=f"inputs.0.data.{spec.name}",
                    )
                row[spec.name] = cats[int(v)]
            else:
                row[spec.name] = v
        rows.append(row)
    return rows


def _requested(body: dict[str, Any]) -> list[tuple[str, bool]]:
    params = body.get("parameters") or {}
    binary_all = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    outputs = body.get("outputs")
    if outputs is None:
        return [(n, binary_all) for n in DEFAULT_OUTPUTS]
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list", field="outputs")
    chosen = []
    for i, out in enumerate(outputs):
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OUTPUTS:
            raise BadRequest(f"unknown output {name!r}; known: {sorted(OUTPUTS)}", field=f"outputs.{i}.name")
        out_params = out.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise BadRequest("'parameters' of an output must be an object", field=f"outputs.{i}.parameters")
        binary = bool(out_params.get("binary_data", binary_all))
        chosen.append((name, binary))
    return chosen


def _array(result: InferenceResult, name: str) -> np.ndarray:
    return result.ood if name == "ood" else result.outputs[name]


def _encode(result: InferenceResult, body: dict[str, Any], requested: list[tuple[str, bool]]) -> Response:
    served = result.served
    header: dict[str, Any] = {
        "model_name": served.name,
        "model_version": served.version,
        "parameters": {"samples": result.samples},
        "outputs": [],
    }
    if body.get("id") is not None:
        header["id"] = body["id"]  # a string: checked before the compute
    blobs: list[bytes] = []
    for name, binary in requested:
        datatype, dtype = OUTPUTS[name]
        arr = np.ascontiguousarray(_array(result, name), dtype=dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel().tolist()
        header["outputs"].append(entry)
    head = orjson.dumps(header)
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


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
        body, binary = _split_binary(request, await request.body())
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object", field="body")
        x = _tensor(body, binary, len(served.feature_names))
        request.state.instances = int(x.shape[0])
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest("'parameters' must be an object", field="parameters")
        rows = _rows(served, x)
        samples, seed = _int_param(params, "samples"), _int_param(params, "seed")
        requested = _requested(body)  # checked before the compute, not after
        if body.get("id") is not None and not isinstance(body["id"], str):
            raise BadRequest("'id' must be a string", field="id")
        result = await state.inference.predict(served, rows, samples, seed, disconnect_waiter(request))
        return _encode(result, body, requested)
