"""Retry-reservation scenarios shared by ``test_reservations.py`` and run by it, some in a process of
their own (``python reservation_scenarios.py grpc REPO STATE_DIR``): the gRPC server's OIP descriptors
clash with tritonclient's, which other tests load into the pytest process."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parents[1]), str(_HERE), str(_HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import toy  # noqa: E402

from service.reservations import ASK, METADATA_KEY  # noqa: E402

PATH = "/v1/models/toy:predict"


async def until(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


@asynccontextmanager
async def held_model(client: Any) -> AsyncIterator[tuple[Any, threading.Event]]:
    """The toy model with one request running (held on a gate) and one queued, and a cost estimate that
    puts anything more over the 1 s budget; yields the batcher and the gate, then lets all finish."""
    state = client.app.state.lrbnn
    batcher = state.inference.batchers["toy"]
    served = state.repository.get("toy")
    gate = threading.Event()
    predict = served.runtime.predict

    def held(*args: Any, **kwargs: Any) -> Any:
        assert gate.wait(30)
        return predict(*args, **kwargs)

    served.runtime.predict = held
    body = {"instances": [toy.instance()]}
    try:
        running = asyncio.ensure_future(client.post(PATH, json=body))
        await until(lambda: batcher._running_units)
        queued = asyncio.ensure_future(client.post(PATH, json=body))
        await until(lambda: batcher.depth)
        # a slower model: the one queued request is 0.7 s of work, so anything more is over the budget
        batcher.cost.seconds_per_unit = 0.7 / batcher._queued_units
        yield batcher, gate
        gate.set()
        assert [r.status_code for r in await asyncio.gather(running, queued)] == [200, 200]
    finally:
        gate.set()
        served.runtime.predict = predict


async def grpc_scenario(repo: Path, state_dir: Path) -> None:
    """The toy model held over budget; a gRPC call that asks is refused with a token in the trailing
    metadata; sent back at its due time, the token admits the call."""
    import grpc
    from service_fixtures import app_client

    from service.grpc_api import oip_pb2 as pb
    from service.grpc_api import oip_pb2_grpc as pb_grpc
    from service.grpc_api.server import build_server
    from service.settings import Settings

    settings = Settings(model_repository=repo, state_dir=state_dir, max_queue_wait_ms=1000.0)
    async with app_client(settings) as client:
        state = client.app.state.lrbnn  # type: ignore[attr-defined]
        server = build_server(state, "127.0.0.1", 0)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = pb.ModelInferRequest(model_name="toy")
                tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
                tensor.contents.fp32_contents.extend([60.0, 80.0, 1.0, 0.0])
                async with held_model(client) as (batcher, gate):
                    try:
                        await stub.ModelInfer(request, metadata=((METADATA_KEY, ASK),))
                    except grpc.aio.AioRpcError as exc:
                        refused = exc
                    else:
                        raise AssertionError("admitted over the budget without a token")
                    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused.code()
                    trailing = dict(refused.trailing_metadata() or ())
                    token = trailing[METADATA_KEY]
                    assert int(trailing["retry-after"]) >= 1
                    due = batcher.book._read(token).due
                    batcher.book.clock = lambda: due
                    kept = asyncio.ensure_future(stub.ModelInfer(request, metadata=((METADATA_KEY, token),)))
                    await until(lambda: batcher.depth == 2)
                    gate.set()
                    answer = await kept
                    assert answer.model_name == "toy"
        finally:
            await server.stop(0)
    print("grpc reservation kept")


if __name__ == "__main__":
    if sys.argv[1:2] != ["grpc"] or len(sys.argv) != 4:
        raise SystemExit("usage: reservation_scenarios.py grpc REPO STATE_DIR")
    asyncio.run(grpc_scenario(Path(sys.argv[2]), Path(sys.argv[3])))
