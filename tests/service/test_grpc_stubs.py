"""The committed gRPC modules are what ``grpc_tools.protoc`` makes of the committed proto (the command
is in ``service/grpc_api/oip.proto``), and the service matches the protocol's names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("oip_pb2.py", "oip_pb2.pyi", "oip_pb2_grpc.py")


def test_committed_stubs_are_regenerated_identically(tmp_path: Path) -> None:
    proto = tmp_path / "service" / "grpc_api" / "oip.proto"
    proto.parent.mkdir(parents=True)
    shutil.copy(ROOT / "service" / "grpc_api" / "oip.proto", proto)
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    assert protoc.main([*args, f"--grpc_python_out={tmp_path}", str(proto)]) == 0
    for name in GENERATED:
        fresh = (proto.parent / name).read_text()
        assert fresh == (ROOT / "service" / "grpc_api" / name).read_text(), f"{name} is stale: regenerate it"


def test_the_service_is_the_open_inference_protocols() -> None:
    """In a fresh interpreter: the stubs register ``inference.*`` in protobuf's default pool, as
    tritonclient's do, so the two cannot be imported into one process (the server never imports the
    client; this test process does)."""
    code = (
        "from service.grpc_api import oip_pb2 as pb\n"
        "s = pb.DESCRIPTOR.services_by_name['GRPCInferenceService']\n"
        "print(s.full_name, sorted(m.name for m in s.methods))\n"
        "print(sorted((f.name, f.number) for f in pb.ModelInferRequest.DESCRIPTOR.fields))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    service, fields = out.stdout.splitlines()
    assert service == (
        "inference.GRPCInferenceService ['ModelInfer', 'ModelMetadata', 'ModelReady', 'ServerLive', "
        "'ServerMetadata', 'ServerReady']"
    )
    assert fields == str(
        sorted(
            {
                "model_name": 1,
                "model_version": 2,
                "id": 3,
                "parameters": 4,
                "inputs": 5,
                "outputs": 6,
                "raw_input_contents": 7,
            }.items()
        )
    )
