"""CPU time of turning one request's inputs into the model input: V1 named objects vs the V2 tensor.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encode_paths.py [--models icu-mortality pm25-forecast]
        [--rows 1 32] [--repeats 5] [--json-out out.json]

Why: V2 used to turn its decoded tensor back into named rows and run the V1 transform on them (issue
#18 item 2); it now runs ``Preprocessor.transform_matrix`` on the tensor itself (``InputAdapter
.encode_tensor``). Both paths are the server's own, so this measures them side by side on the same
values (drawn inside each feature's plausible range, 10 % missing), after checking that they give
bitwise the same model input and the same imputed and flagged names. ``named rows`` is the V1 path
(``encode``) on the equivalent objects; ``via rows`` is what V2 did before session 13: the tensor turned
into those objects (the conversion here is the one ``service.inputs.tensor_rows`` did), then ``encode``.
Best of ``--repeats`` timed loops of ``time.process_time``, both paths interleaved in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_core.checkpoint.manifest import InputSchema  # noqa: E402
from service.inputs import InputAdapter, build_adapter  # noqa: E402


def _tensor(adapter: InputAdapter, rows: int, rng: np.random.Generator) -> np.ndarray:
    dims = [rows if d == -1 else d for d in adapter.v2_input().shape]
    x = np.empty(dims)
    for j, spec in enumerate(adapter.features()):
        if spec.kind == "categorical":
            x[..., j] = rng.integers(0, len(spec.categories or []), dims[:-1])
        else:
            assert spec.plausible_low is not None and spec.plausible_high is not None
            x[..., j] = rng.uniform(spec.plausible_low, spec.plausible_high, dims[:-1])
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def _named(adapter: InputAdapter, row: list[float]) -> dict[str, Any]:
    return {
        s.name: (s.categories or [])[int(v)] if s.kind == "categorical" else v
        for s, v in zip(adapter.features(), row, strict=True)
        if not math.isnan(v)
    }


def _instances(adapter: InputAdapter, x: np.ndarray) -> list[dict[str, Any]]:
    if x.ndim == 2:
        return [_named(adapter, row) for row in x.tolist()]
    return [{"hours": [_named(adapter, hour) for hour in window]} for window in x.tolist()]


def _best(fn: Callable[[], object], number: int, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - t0) / number)
    return best * 1e6


def _interleaved(fns: list[Callable[[], object]], number: int, repeats: int) -> list[float]:
    """Best loop of each, the functions taking turns so that all of them see the same machine."""
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        best = [min(b, _best(fn, number, 1)) for b, fn in zip(best, fns, strict=True)]
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["icu-mortality", "pm25-forecast"])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "deploy" / "models")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    results = []
    head = ("model", "rows", "named rows us", "via rows us", "tensor us", "tensor/via")
    print(f"{head[0]:<16} {head[1]:>5} {head[2]:>14} {head[3]:>12} {head[4]:>10} {head[5]:>10}")
    for model in args.models:
        manifest = json.loads((args.model_repository / model / "1" / "manifest.json").read_text())
        adapter = build_adapter(InputSchema.model_validate(manifest["input_schema"]))
        for rows in args.rows:
            x = _tensor(adapter, rows, np.random.default_rng(rows))
            instances = _instances(adapter, x)
            a, b = adapter.encode(instances), adapter.encode_tensor(x)
            if a.x.tobytes() != b.x.tobytes() or (a.imputed, a.flagged) != (b.imputed, b.flagged):
                raise SystemExit(f"{model}: the two paths disagree")
            number = max(5, int(2000 / (rows * x[0].size / x.shape[-1])))
            named, via, tensor = _interleaved(
                [
                    partial(adapter.encode, instances),
                    lambda a=adapter, x=x: a.encode(_instances(a, x)),  # type: ignore[misc]
                    partial(adapter.encode_tensor, x),
                ],
                number,
                args.repeats,
            )
            results.append(
                {
                    "model": model,
                    "rows": rows,
                    "named_rows_us": round(named, 1),
                    "via_rows_us": round(via, 1),
                    "tensor_us": round(tensor, 1),
                    "tensor_over_via_rows": round(tensor / via, 3),
                }
            )
            print(f"{model:<16} {rows:>5} {named:>14.1f} {via:>12.1f} {tensor:>10.1f} {tensor / via:>10.2f}")
    report = {"benchmark": "encode_paths", "machine": platform.machine(), "results": results}
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
