"""The Open Inference Protocol (KServe V2) tensor codec: request tensors in, output tensors out.

Shared by the REST endpoint (``api/v2.py``) and gRPC (``grpc_api/server.py``): datatypes and output
names, header and shape checks, BYTES length-prefixed encoding, the JSON/binary tensor decoding and the
response encoding (JSON data or the binary extension). No routing here.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from service.api.body import json_int, parse_json
from service.errors import BadRequest, InvalidInput
from service.inference import InferenceResult
from service.inputs import TensorSpec

MAX_FLOAT = sys.float_info.max
DTYPES: dict[str, type[np.generic]] = {"FP32": np.float32, "FP64": np.float64}
#: Output name -> (datatype, numpy dtype); the default set is the contract's.
OUTPUTS: dict[str, tuple[str, type[np.generic]]] = {
    "mean": ("FP32", np.float32),
    "variance": ("FP32", np.float32),
    "epistemic": ("FP32", np.float32),
    "aleatoric": ("FP32", np.float32),
    "ood_score": ("FP32", np.float32),
    "novelty_score": ("FP32", np.float32),
    "ood": ("BOOL", np.bool_),
    "prediction_id": ("BYTES", np.object_),
}
DEFAULT_OUTPUTS = ("mean", "variance", "epistemic", "ood_score", "novelty_score", "ood", "prediction_id")
HEADER_LENGTH = "inference-header-content-length"


def split_binary(header: str | None, raw: bytes) -> tuple[Any, bytes]:
    """The JSON part and the binary tensor data of a body; ``header``: its Inference-Header-Content-Length."""
    if header is None:
        return parse_json(raw), b""
    try:
        n = int(header)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} is not an integer: {header!r}", field=HEADER_LENGTH) from None
    if not 0 < n <= len(raw):
        raise BadRequest(f"{HEADER_LENGTH}={n} does not fit a {len(raw)}-byte body", field=HEADER_LENGTH)
    return parse_json(raw[:n]), raw[n:]


def int_param(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    number = json_int(value)
    if number is None:
        raise InvalidInput(f"parameters.{key} must be an integer, got {value!r}", field=f"parameters.{key}")
    return number


def check_header(name: Any, datatype: Any, shape: Any, spec: TensorSpec) -> list[int]:
    """The input tensor's name, datatype and shape against the model's ``spec`` (REST and gRPC alike);
    returns the shape."""
    if name != spec.name and name not in spec.aliases:
        raise BadRequest(f"unknown input {name!r}; expected {spec.name!r}", field="inputs.0.name")
    accepted = ("BYTES",) if spec.datatype == "BYTES" else tuple(DTYPES)
    if datatype not in accepted:
        raise BadRequest(
            f"input {name!r}: datatype {datatype!r} is not supported; send {spec.datatype}",
            field="inputs.0.datatype",
        )
    return check_shape(shape, spec)


def check_shape(shape: Any, spec: TensorSpec) -> list[int]:
    want = "[" + ", ".join("N" if d == -1 else str(d) for d in spec.shape) + "]"
    dims = [json_int(d) for d in shape] if isinstance(shape, list) else []
    ok = (
        isinstance(shape, list)
        and len(dims) == len(spec.shape)
        and all(d is not None and d >= 0 for d in dims)
        and all(w in (-1, d) for w, d in zip(spec.shape, dims, strict=False))
    )
    if not ok:
        raise BadRequest(f"input {spec.name!r}: shape must be {want}, got {shape!r}", field="inputs.0.shape")
    return [int(d) for d in dims if d is not None]


def decode_bytes(blob: bytes, count: int, name: str) -> list[str]:
    """The binary BYTES layout of the protocol: per element a 4-byte little-endian length, then the bytes."""
    out: list[str] = []
    pos = 0
    for i in range(count):
        if pos + 4 > len(blob):
            raise BadRequest(f"input {name!r}: binary data ends before element {i}", field="inputs.0")
        size = int.from_bytes(blob[pos : pos + 4], "little")
        pos += 4
        if pos + size > len(blob):
            raise BadRequest(f"input {name!r}: element {i} runs past the binary data", field="inputs.0")
        out.append(utf8(blob[pos : pos + size], name, i))
        pos += size
    return out


def encode_bytes(values: list[str]) -> bytes:
    """:func:`decode_bytes`' layout: per element a 4-byte little-endian length, then its UTF-8 bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in (v.encode() for v in values))


def utf8(raw: bytes, name: str, i: int, field: str = "inputs.0.data") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: element {i} is not valid UTF-8", field=field) from None


def _numbers(flat: list[Any], name: str) -> np.ndarray:
    values = np.empty(len(flat), dtype=np.float64)
    for i, v in enumerate(flat):
        if v is None:
            values[i] = math.nan
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                if type(v) is int and not -MAX_FLOAT <= v <= MAX_FLOAT:  # refused, never rounded
                    raise OverflowError
                values[i] = v
            except OverflowError:  # an integer literal beyond float range
                raise BadRequest(
                    f"input {name!r}: element {i} is out of range", field="inputs.0.data"
                ) from None
        else:
            raise BadRequest(
                f"input {name!r}: element {i} is {v!r}, not a number or null", field="inputs.0.data"
            )
    return values


def decode_tensor(body: dict[str, Any], binary: bytes, spec: TensorSpec) -> np.ndarray:
    """The one input tensor, checked against the model's ``spec``: float64 (FP) or an object array of str."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("'inputs' must be a list holding exactly one tensor", field="inputs")
    given = inputs[0]
    name, datatype = given.get("name"), given.get("datatype")
    shape = check_header(name, datatype, given.get("shape"), spec)
    assert isinstance(datatype, str)  # check_header accepted it
    count = math.prod(shape)
    params = given.get("parameters") or {}
    if isinstance(params, dict) and "binary_data_size" in params:
        size = params["binary_data_size"]
        if datatype == "BYTES":
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} bytes after "
                    "the JSON header",
                    field="inputs.0.parameters.binary_data_size",
                )
            return np.asarray(decode_bytes(binary[:size], count, str(name)), dtype=object).reshape(shape)
        dtype = DTYPES[datatype]
        want = count * np.dtype(dtype).itemsize
        if size != want or len(binary) < want:
            raise BadRequest(
                f"input {name!r}: binary_data_size {size!r} must be {want} bytes for shape {shape}, "
                f"with that many bytes after the JSON header (got {len(binary)})",
                field="inputs.0.parameters.binary_data_size",
            )
        return np.frombuffer(binary[:want], dtype=dtype).astype(np.float64).reshape(shape)
    data = given.get("data")
    if data is None:
        raise BadRequest(f"input {name!r} has no 'data'", field="inputs.0.data")
    flat = np.asarray(data, dtype=object).ravel().tolist() if isinstance(data, list) else None
    if flat is None or len(flat) != count:
        got = "not a list" if flat is None else f"{len(flat)} values"
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values, got {got}", field="inputs.0.data"
        )
    if datatype == "BYTES":
        bad = next((i for i, v in enumerate(flat) if not isinstance(v, str)), None)
        if bad is not None:
            raise BadRequest(f"input {name!r}: element {bad} is not a string", field="inputs.0.data")
        return np.asarray(flat, dtype=object).reshape(shape)
    return _numbers(flat, str(name)).reshape(shape)


def requested_outputs(body: dict[str, Any]) -> list[tuple[str, bool]]:
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
        if not isinstance(name, str) or name not in OUTPUTS:  # (an object is no name, nor hashable)
            raise BadRequest(f"unknown output {name!r}; known: {sorted(OUTPUTS)}", field=f"outputs.{i}.name")
        out_params = out.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise BadRequest("'parameters' of an output must be an object", field=f"outputs.{i}.parameters")
        binary = bool(out_params.get("binary_data", binary_all))
        chosen.append((name, binary))
    return chosen


def output_array(result: InferenceResult, name: str) -> np.ndarray:
    if name == "ood":
        return result.ood
    if name == "novelty_score" and name not in result.outputs:  # a checkpoint without a detector
        return np.full(result.ood.shape, np.nan, dtype=np.float32)
    return result.outputs[name]


def encode_response(
    result: InferenceResult, body: dict[str, Any], requested: list[tuple[str, bool]]
) -> Response:
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
        if datatype == "BYTES":  # prediction_id: JSON strings, or length-prefixed bytes (OIP)
            ids = result.prediction_ids
            entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(ids)]}
            if binary:
                blob = encode_bytes(ids)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = ids
            header["outputs"].append(entry)
            continue
        arr = np.ascontiguousarray(output_array(result, name), dtype=dtype)
        entry = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
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
