"""deploy/demo_shift.py: instance generators stay in range / go out of range, and the driver is bounded."""

from __future__ import annotations

import http.server
import json
import random
import threading
from typing import Any, ClassVar

import pytest
from deploy_helpers import load_script

demo = load_script("demo_shift")

FEATURES: list[dict[str, Any]] = [
    {"name": "age", "kind": "numeric", "unit": "years", "min": 18.0, "max": 100.0,
     "plausible_low": -3.0, "plausible_high": 123.0, "impute": 64.0},
    {"name": "meanbp", "kind": "numeric", "unit": "mmHg", "min": 0.0, "max": 180.0,
     "plausible_low": -44.0, "plausible_high": 224.0, "impute": 77.0},
    {"name": "diabetes", "kind": "numeric", "unit": "0/1", "min": 0.0, "max": 1.0,
     "plausible_low": 0.0, "plausible_high": 1.0, "impute": 0.0},
    {"name": "sex", "kind": "categorical", "unit": "", "categories": ["female", "male"], "impute": "male"},
]  # fmt: skip


def test_in_distribution_within_training_range() -> None:
    rng = random.Random(0)
    for _ in range(200):
        inst = demo.in_distribution(FEATURES, rng)
        assert 18.0 <= inst["age"] <= 100.0 and 0.0 <= inst["meanbp"] <= 180.0
        assert inst["diabetes"] in (0.0, 1.0) and inst["sex"] in ("female", "male")


def test_shifted_outside_training_but_plausible() -> None:
    rng = random.Random(1)
    outside = 0
    for _ in range(200):
        inst = demo.shifted(FEATURES, rng)
        for f in FEATURES[:2]:
            v = inst[f["name"]]
            assert max(f["plausible_low"], 0.0) <= v <= f["plausible_high"]
            outside += not (f["min"] <= v <= f["max"])
    assert outside > 150  # most numeric features pushed out of the training range


def test_service_features_without_min_max() -> None:
    """GET /v1/models publishes plausible ranges only: the inner 70 % stands in for the training range."""
    f = {"name": "x", "kind": "numeric", "unit": "u", "plausible_low": 0.0, "plausible_high": 100.0,
         "imputed_with": 50.0}  # fmt: skip
    assert demo._range(f) == (15.0, 85.0)
    inst = demo.in_distribution([f], random.Random(0))
    assert 15.0 <= inst["x"] <= 85.0


def test_parse_args_bounds() -> None:
    a = demo.parse_args([])
    assert a.url == "http://127.0.0.1:8000" and a.phases == "in,shift"
    for bad in (["--seconds", "0"], ["--rate", "1000"], ["--phases", "in,chaos"]):
        with pytest.raises(SystemExit):
            demo.parse_args(bad)


class _Predict(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        preds = [{"mean": 0.1, "ood": i == 0} for i, _ in enumerate(body["instances"])]
        out = json.dumps({"predictions": preds}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


def test_drive_is_bounded_and_counts() -> None:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Predict)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        stats = demo.drive(url, "m", lambda r: demo.in_distribution(FEATURES, r), seconds=5, rate=200,
                           batch=4, samples=8, max_requests=7)  # fmt: skip
    finally:
        srv.shutdown()
        srv.server_close()
    assert stats == {"requests": 7, "ok": 7, "failed": 0, "predictions": 28, "ood": 7, "outcomes": 0}
    assert _Predict.bodies[0]["parameters"]["samples"] == 8


def test_drive_counts_failures_when_nothing_listens() -> None:
    stats = demo.drive("http://127.0.0.1:9", "m", lambda r: {}, seconds=0.5, rate=10, max_requests=2)
    assert stats["failed"] == stats["requests"] == 2


def test_icu_cases_are_real_test_patients_with_one_unit_error_each(data_dir: Any) -> None:
    unchanged = demo.icu_cases(str(data_dir), shift=False)
    shifted = demo.icu_cases(str(data_dir), shift=True)
    assert len(unchanged) > 1000 and {label for _, label in unchanged} == {0, 1}
    assert all(v is not None and v == v for inst, _ in unchanged for v in inst.values())  # no NaN sent
    by_features = {json.dumps(inst, sort_keys=True) for inst, _ in unchanged}
    changed = 0
    for inst, _ in shifted:
        changed += json.dumps(inst, sort_keys=True) not in by_features
    assert changed == len(shifted)  # every re-sent patient carries a unit error
