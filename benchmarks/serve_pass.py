"""CPU time of the model pass the server runs for one request: ``predict`` vs the frozen ``RowwisePlan``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_pass.py [--checkpoint deploy/models/icu-mortality/1]
        [--samples 1 128] [--rows 1 32] [--repeats 7] [--json-out out.json]

Why: the "uncertainty nearly free" target of issue 4 compares a request at S=128 with one to a
deterministic model, and the difference is this pass. Process CPU time (``time.process_time``) of one
thread, best of ``--repeats`` timed loops (the machine's speed varies from minute to minute; the best
loop is the least disturbed), every variant measured in the same run, interleaved. Per-request noise
(``NoiseSource.from_seeds``, one block per row), as the server draws it. Prints a table and one JSON
object. ``trust outputs``: what issue #14 adds per request (clip + implausible rule, novelty score,
joint OOD decision with reasons, conformal set or interval), to compare with the S = 128 pass.
``outcome tracking``: what issue #15 adds (prediction ids, the per-feature drift window, and the
prediction queued to a real SQLite store whose writer thread inserts it: ``process_time`` counts every
thread of the process, so the insert's CPU is in the figure).
On a checkout without ``model_core.plan`` (before session 4) only ``predict`` is measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from model_core.checkpoint import load_checkpoint  # noqa: E402
from model_core.predict import predict, summarize  # noqa: E402
from model_core.sampling.noise import NoiseSource  # noqa: E402
from model_core.sampling.types import Backend  # noqa: E402

try:
    from model_core.plan import RowwisePlan
except ImportError:  # a checkout from before the plan
    RowwisePlan = None  # type: ignore[assignment,misc]


def best_us(fn: Callable[[], object], loops: int, repeats: int) -> float:
    """Best per-call CPU microseconds over ``repeats`` loops of ``loops`` calls (after a warm-up)."""
    for _ in range(max(10, loops // 10)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(loops):
            fn()
        best = min(best, (time.process_time() - t0) / loops)
    return best * 1e6


def trust_outputs(ckpt: Any, x: torch.Tensor, samples: int) -> Callable[[], object]:
    """What issue #14 adds to a request beyond the pass: clipping the unclipped input and the
    implausible-row rule (encode), the novelty score, the joint decision with its reasons, and the
    conformal set or interval (numpy, on the batch)."""
    import numpy as np

    from model_core.conformal import prediction_sets
    from model_core.data.preprocessing import Preprocessor
    from model_core.ood import reasons

    manifest = ckpt.manifest
    calib = manifest.calibration
    pre = Preprocessor.from_dict(manifest.input_schema.preprocessing)
    z = x.numpy().astype(np.float32)
    rows = int(x.shape[0])
    pred = predict(ckpt.model, x, samples, noise=NoiseSource.from_seeds(list(range(rows)), [1] * rows))
    epistemic, mean, var = pred.ood_score.numpy(), pred.mean.numpy(), pred.variance.numpy()
    q = calib.conformal.quantile if calib.conformal is not None else 1.0
    threshold = calib.novelty.threshold if calib.novelty is not None else None

    def run() -> object:
        pre.clip(z)
        odd = pre.implausible_rows(z)
        novelty = ckpt.novelty.score(z) if ckpt.novelty is not None else None
        decision = reasons(epistemic, calib.ood_threshold, novelty, threshold, odd)
        if manifest.task.value == "regression":
            return decision, mean - q * np.sqrt(var), mean + q * np.sqrt(var)
        return decision, prediction_sets(mean, q)

    return run


def outcome_tracking(ckpt: Any, x: torch.Tensor, samples: int) -> Callable[[], object] | None:
    """Prediction ids, the per-feature drift window (10,000 rows) and a store submit per request."""
    import tempfile

    import numpy as np

    try:
        from model_core.data.preprocessing import Preprocessor
        from model_core.feature_reference import FeatureBinner
        from service.inference import new_ids
        from service.monitoring.feature_drift import FeatureDriftMonitor
        from service.store.db import PredictionStore
        from service.store.engine import default_url
        from service.store.records import PredictionBatch
    except ImportError:  # a checkout from before issue #15
        return None
    manifest = ckpt.manifest
    refs = manifest.drift_reference.features
    if not refs:
        return None
    pre = Preprocessor.from_dict(manifest.input_schema.preprocessing)
    monitor = FeatureDriftMonitor(FeatureBinner.tabular(pre, refs), 10_000)
    store = PredictionStore(default_url(Path(tempfile.mkdtemp(prefix="serve_pass_"))), queue_limit=10**7)
    store.open()
    store.wait_ready(30)
    z = x.numpy().astype(np.float32)
    rows = int(x.shape[0])
    pred = predict(ckpt.model, x, samples, noise=NoiseSource.from_seeds(list(range(rows)), [1] * rows))
    outputs = {
        k: getattr(pred, k).numpy() for k in ("mean", "variance", "epistemic", "aleatoric", "ood_score")
    }
    ood = np.zeros(rows, dtype=bool)

    def run() -> object:
        ids = new_ids(rows)
        monitor.add(z)
        batch = PredictionBatch(
            ids, time.time(), "m", "1", manifest.sha256, outputs, ood, [[]] * rows, None, z
        )
        return store.submit(batch)

    return run


def variants(ckpt: Any, x: torch.Tensor, samples: int) -> dict[str, Callable[[], object]]:
    model = ckpt.model
    rows = int(x.shape[0])

    def noise() -> NoiseSource:
        return NoiseSource.from_seeds(list(range(rows)), [1] * rows)

    out: dict[str, Callable[[], object]] = {
        "predict": lambda: predict(model, x, samples, noise=noise(), backend=Backend.LRT)
    }
    if RowwisePlan is not None and RowwisePlan.supports(model):
        plan = RowwisePlan.build(model)
        out["plan"] = lambda: predict(plan, x, samples, noise=noise())
    with torch.inference_mode():
        outputs = predict_outputs(model, x, samples, noise())
    out["summary (row-wise)"] = lambda: summarize(outputs, model.spec, rowwise=True)
    out["summary (vectorised)"] = lambda: summarize(outputs, model.spec)
    out["trust outputs"] = trust_outputs(ckpt, x, samples)
    tracking = outcome_tracking(ckpt, x, samples)
    if tracking is not None:
        out["outcome tracking"] = tracking
    return out


def predict_outputs(model: Any, x: torch.Tensor, samples: int, noise: NoiseSource) -> torch.Tensor:
    from model_core.layers.base import Mode, PredictiveContext

    model.set_mode(Mode.SAMPLE)
    return model.predictive(x, PredictiveContext(samples, noise, Backend.LRT))  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "deploy/models/icu-mortality/1")
    p.add_argument("--samples", type=int, nargs="+", default=[1, 128])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    p.add_argument(
        "--loops", type=int, default=1000, help="calls per timed loop (one row; fewer for more rows)"
    )
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint, device="cpu")
    model = ckpt.model
    n_in = int(model.spec.in_features)
    gen = torch.Generator().manual_seed(0)
    results: list[dict[str, Any]] = []
    print(f"{'rows':>4} {'S':>5}  {'variant':<22} {'us/call':>9} {'us/row':>8}")
    for rows in args.rows:
        x = torch.randn(rows, n_in, generator=gen)
        for samples in args.samples:
            loops = max(20, args.loops // rows)
            for name, fn in variants(ckpt, x, samples).items():
                us = best_us(fn, loops, args.repeats)
                results.append(
                    {"rows": rows, "samples": samples, "variant": name, "us_per_call": round(us, 1)}
                )
                print(f"{rows:>4} {samples:>5}  {name:<22} {us:>9.1f} {us / rows:>8.1f}")
    doc = {
        "benchmark": "serve_pass",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "checkpoint": str(args.checkpoint),
        "threads": 1,
        "results": results,
    }
    text = json.dumps(doc)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
