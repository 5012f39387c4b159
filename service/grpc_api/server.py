"""Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) beside the REST server.

One process, one event loop: the ``grpc.aio`` server runs on uvicorn's loop and calls what the REST
routes call (``AppState.track`` for auth, draining, the metrics and the limits; the same batcher through
``InferenceService.predict``), so a gRPC request and a REST request are batched together and answered
the same numbers. Tensors are decoded as V2 REST decodes them (``service.api.v2``: names, datatypes,
shapes, the 4-byte length prefix of BYTES). Every ``ServiceError`` maps to a gRPC status by its class
(:data:`STATUS`), never UNKNOWN for client input; ``Retry-After`` travels as trailing metadata, and so
does a retry reservation's token (``lrbnn-retry-token``, sent back as invocation metadata: the REST
header's protocol, ``service/reservations.py``).

With several workers (``service/workers.py``) each worker binds the port with ``SO_REUSEPORT`` (gRPC's
default on Linux), so the kernel spreads connections over them as the shared socket does for REST.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from service.api.v2 import SERVER_NAME, SERVER_VERSION, lookup_version, metadata
from service.api.v2_codec import (
    DEFAULT_OUTPUTS,
    DTYPES,
    OUTPUTS,
    check_header,
    decode_bytes,
    encode_bytes,
    output_array,
    utf8,
)
from service.errors import (
    BadRequest,
    ClientDisconnected,
    Draining,
    Forbidden,
    InferenceTimeout,
    InvalidInput,
    ModelFailed,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    QueueFull,
    ServiceError,
    Unauthorized,
)
from service.grpc_api import oip_pb2 as pb
from service.grpc_api import oip_pb2_grpc as pb_grpc
from service.inference import InferenceResult, Tensor
from service.inputs import TensorSpec
from service.repository import ServedModel
from service.reservations import METADATA_KEY as RETRY_METADATA_KEY
from service.state import AppState, Endpoint, retry_claim

log = logging.getLogger("lrbnn.service.grpc")
T = TypeVar("T")

#: ServiceError class -> gRPC status (the REST status's gRPC counterpart, as Triton and KServe map them)
STATUS: dict[type[ServiceError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Draining: grpc.StatusCode.UNAVAILABLE,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    ModelFailed: grpc.StatusCode.UNAVAILABLE,
    InferenceTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    ClientDisconnected: grpc.StatusCode.CANCELLED,
}
#: the typed ``contents`` field of each input datatype this server accepts
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def status_of(exc: ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    """One invocation metadata value (``authorization``, ``lrbnn-retry-token``)."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _parameter(value: Any, key: str) -> int | None:
    """An int64 request parameter (``samples``, ``seed``); a string or bool one is refused."""
    kind = value.WhichOneof("parameter_choice")
    if kind == "int64_param":
        return int(value.int64_param)
    raise InvalidInput(f"parameters.{key} must be an int64 parameter, got {kind}", field=f"parameters.{key}")


def decode_input(request: pb.ModelInferRequest, spec: TensorSpec) -> np.ndarray:
    """The one input tensor as V2 REST decodes it: float64, or an object array of str for BYTES."""
    if len(request.inputs) != 1:
        raise BadRequest("'inputs' must hold exactly one tensor", field="inputs")
    given = request.inputs[0]
    shape = check_header(given.name, given.datatype, list(given.shape), spec)
    count = math.prod(shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise BadRequest("raw_input_contents must hold one entry per input", field="raw_input_contents")
        blob = request.raw_input_contents[0]
        if given.datatype == "BYTES":
            return np.asarray(decode_bytes(blob, count, given.name), dtype=object).reshape(shape)
        dtype = np.dtype(DTYPES[given.datatype])
        if len(blob) != count * dtype.itemsize:
            raise BadRequest(
                f"input {given.name!r}: shape {shape} needs {count * dtype.itemsize} raw bytes, "
                f"got {len(blob)}",
                field="raw_input_contents",
            )
        return np.frombuffer(blob, dtype=dtype.newbyteorder("<")).astype(np.float64).reshape(shape)
    values = list(getattr(given.contents, CONTENTS[given.datatype]))
    if len(values) != count:
        raise BadRequest(
            f"input {given.name!r}: shape {shape} needs {count} values, got {len(values)}",
            field="inputs.0.contents",
        )
    if given.datatype == "BYTES":
        texts = [utf8(v, given.name, i, "inputs.0.contents") for i, v in enumerate(values)]
        return np.asarray(texts, dtype=object).reshape(shape)
    return np.asarray(values, dtype=np.float64).reshape(shape)


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    names = [o.name for o in request.outputs] or list(DEFAULT_OUTPUTS)
    for i, name in enumerate(names):
        if name not in OUTPUTS:
            raise BadRequest(f"unknown output {name!r}; known: {sorted(OUTPUTS)}", field=f"outputs.{i}.name")
    return names


def encode_result(
    result: InferenceResult, request: pb.ModelInferRequest, names: list[str]
) -> pb.ModelInferResponse:
    """Every output as raw little-endian bytes (what Triton answers; tritonclient reads them)."""
    served = result.served
    response = pb.ModelInferResponse(model_name=served.name, model_version=served.version, id=request.id)
    response.parameters["samples"].int64_param = result.samples
    for name in names:
        datatype, dtype = OUTPUTS[name]
        if datatype == "BYTES":
            blob = encode_bytes(result.prediction_ids)
            response.outputs.add(name=name, datatype=datatype, shape=[len(result.prediction_ids)])
        else:
            arr = np.ascontiguousarray(output_array(result, name), dtype=np.dtype(dtype).newbyteorder("<"))
            blob = arr.tobytes()
            response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        response.raw_output_contents.append(blob)
    return response


Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]


def answered(method: Method[T]) -> Method[T]:
    """A method's ``ServiceError`` as its gRPC status (``retry-after`` as trailing metadata)."""

    @functools.wraps(method)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            message = exc.message if exc.field is None else f"{exc.message} (field: {exc.field})"
            trailing = []
            if exc.retry_after_s is not None:
                trailing.append(("retry-after", str(max(1, math.ceil(exc.retry_after_s)))))
            if isinstance(exc, QueueFull) and exc.retry_token is not None:
                trailing.append((RETRY_METADATA_KEY, exc.retry_token))
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            await context.abort(status_of(exc), message)
            raise  # abort raises; this line only tells the type checker

    return call


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six OIP methods over the app's state (the same objects the REST routes use)."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def _served(self, context: grpc.aio.ServicerContext, name: str, version: str) -> ServedModel:
        self.state.authorize(None, _metadata(context, "authorization"))
        return lookup_version(self.state, name, version)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def ServerMetadata(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=["binary_tensor_data"]
        )

    @answered
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        served = self._served(context, request.name, request.version)
        ready = not self.state.draining and self.state.inference.attached(served.name)
        return pb.ModelReadyResponse(ready=ready)

    @answered
    async def ModelMetadata(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        meta = metadata(self._served(context, request.name, request.version))
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    @answered
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        state = self.state
        name = request.model_name
        async with state.track(
            None,
            name,
            Endpoint.GRPC_INFER,
            _metadata(context, "authorization"),
            _metadata(context, RETRY_METADATA_KEY),
        ) as served:
            if request.model_version and request.model_version != served.version:
                raise ModelNotFound(
                    f"model {name!r} version {request.model_version!r} is not served", "version"
                )
            x = decode_input(request, served.inputs.v2_input())
            params = request.parameters
            samples = _parameter(params["samples"], "samples") if "samples" in params else None
            seed = _parameter(params["seed"], "seed") if "seed" in params else None
            names = requested_outputs(request)
            result = await state.inference.predict(served, Tensor(x), samples, seed, claim=retry_claim())
            return encode_result(result, request, names)


def build_server(state: AppState, host: str, port: int) -> grpc.aio.Server:
    """A gRPC server on ``host:port`` (not started), with the REST body limit as its message limit."""
    limit = state.settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 64 << 20)),
            ("grpc.so_reuseport", 1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC could not bind {address}")
    return server
