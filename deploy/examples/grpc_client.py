"""Open Inference Protocol over gRPC with the standard client (tritonclient.grpc), as a model client at
scale calls the server: one ICU patient (raw units, NaN = not measured) and one review snippet.

    .venv/bin/python deploy/examples/grpc_client.py [--url localhost:8001]
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="localhost:8001", help="host:port of LRBNN_GRPC_PORT")
    args = p.parse_args()
    client = grpcclient.InferenceServerClient(args.url)
    print("live:", client.is_server_live(), " ready:", client.is_server_ready())
    meta = client.get_model_metadata("icu-mortality")
    print("input:", meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape))

    x = np.full((1, 24), np.nan, dtype=np.float32)  # every feature missing (imputed) but these:
    x[0, 0], x[0, 13], x[0, 18] = 71.5, 38.9, 2.4  # age (years), temp (°C), crea (mg/dL)
    tensor = grpcclient.InferInput("features", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    r = client.infer("icu-mortality", [tensor], parameters={"samples": 200, "seed": 7})
    for name in ("mean", "variance", "epistemic", "ood_score", "ood", "prediction_id"):
        print(f"icu-mortality {name}:", r.as_numpy(name)[0])

    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(
        np.array([b"A gripping, beautifully acted film that never lets go."], dtype=object)
    )
    r = client.infer("review-sentiment", [text], parameters={"seed": 7})
    print("review-sentiment mean:", r.as_numpy("mean")[0], " ood:", r.as_numpy("ood")[0])


if __name__ == "__main__":
    main()
