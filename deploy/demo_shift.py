#!/usr/bin/env python3
"""Drive in-distribution, then shifted, traffic against a running lrbnn service.

Why: the uncertainty, OOD and drift panels only move when the input distribution moves; this script
makes that visible in Grafana (and is what the Prometheus end-to-end test uses). Standard library only
(urllib), so it runs on any machine with Python, inside or outside the container. Bounded in time and
in request count; talks to loopback unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "icu-mortality"
MAX_REQUESTS_PER_PHASE = 10_000

# Share of numeric features pushed to the edge of the plausible range in a shifted instance.
SHIFT_FRACTION = 0.6


def _range(feature: dict[str, Any]) -> tuple[float, float] | None:
    """Training range of a numeric feature.

    The manifest has min/max; GET /v1/models only publishes the plausible range, so the training range
    is then approximated by its inner 70 %.
    """
    lo, hi = feature.get("min"), feature.get("max")
    if lo is not None and hi is not None:
        return float(lo), float(hi)
    pl, ph = feature.get("plausible_low"), feature.get("plausible_high")
    if pl is None or ph is None:
        return None
    span = float(ph) - float(pl)
    return float(pl) + 0.15 * span, float(ph) - 0.15 * span


def _center(feature: dict[str, Any], lo: float, hi: float) -> float:
    c = feature.get("impute", feature.get("imputed_with"))
    return float(c) if isinstance(c, (int, float)) else (lo + hi) / 2


def features_from_manifest(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The feature list of a checkpoint manifest (tabular models)."""
    return list(manifest["input_schema"]["preprocessing"]["features"])


def features_from_service(
    url: str, model: str, token: str | None = None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The feature list the service publishes at GET /v1/models."""
    doc = _request(f"{url.rstrip('/')}/v1/models", None, token, timeout)
    for m in doc.get("models", []):
        if m.get("name") == model:
            return list(m["features"])
    raise SystemExit(f"model {model!r} not served at {url}")


def in_distribution(features: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """One patient near the middle of the training cohort (median +- a small spread, within range)."""
    inst: dict[str, Any] = {}
    for f in features:
        if f.get("kind") == "categorical" and f.get("categories"):
            inst[f["name"]] = rng.choice(f["categories"])
            continue
        r = _range(f)
        if r is None:
            continue
        lo, hi = r
        if f.get("unit") == "0/1":
            inst[f["name"]] = float(rng.random() < 0.2)
            continue
        c = _center(f, lo, hi)
        inst[f["name"]] = round(min(hi, max(lo, rng.gauss(c, 0.05 * (hi - lo)))), 4)
    return inst


def shifted(features: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """One patient far outside the cohort: many labs and vitals at the plausible edges at once.

    Values lie between the training range and the plausible limits (never negative for a feature whose
    training values are not), so the service accepts them but the model has never seen such a patient:
    epistemic uncertainty rises, OOD flags and drift follow.
    """
    inst = in_distribution(features, rng)
    for f in features:
        r = _range(f)
        if f.get("kind") == "categorical" or f.get("unit") == "0/1" or r is None:
            continue
        if rng.random() >= SHIFT_FRACTION:
            continue
        lo, hi = r
        pl = float(f["plausible_low"]) if f.get("plausible_low") is not None else lo
        ph = float(f["plausible_high"]) if f.get("plausible_high") is not None else hi
        if lo >= 0:
            pl = max(pl, 0.0)
        inst[f["name"]] = round(rng.uniform(hi, ph) if rng.random() < 0.5 else rng.uniform(pl, lo), 4)
    return inst


def _request(url: str, body: dict | None, token: str | None, timeout: float) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def calibrated_outcome(prediction: dict[str, Any], rng: random.Random) -> int:
    """A simulated outcome drawn from the model's own probability: realized matches estimated."""
    return int(rng.random() < float(prediction["mean"]))


def reversed_outcome(prediction: dict[str, Any], rng: random.Random) -> int:
    """A simulated outcome drawn from 1 - the model's probability: the model is wrong about these
    patients (what a unit error or a new population does), so realized performance collapses while
    the label-free estimate, which trusts the probabilities, does not."""
    return int(rng.random() >= float(prediction["mean"]))


Outcome = Callable[[dict[str, Any], random.Random], Any]
#: one patient and the outcome that was really observed for them
Case = tuple[dict[str, Any], Any]


def icu_cases(data_dir: str, shift: bool) -> list[Case]:
    """Real SUPPORT2 test patients of the bundled ICU model (its own test split, seed 0) with their real
    outcome (``hospdead``: 0 survived, 1 died); ``shift``: the same patients re-sent with one unit error
    each (``model_core.data.icu.unit_error_frames``: temperature in °F, creatinine or bilirubin in
    µmol/L, albumin in g/L, glucose in mmol/L). Needs the lrbnn package (pandas) and the data."""
    import math

    import pandas as pd

    from model_core.data.icu import ICU_FEATURES, ICU_RELATIVE_PATH, ICU_TARGET, load_icu, unit_error_frames

    splits = load_icu(data_dir, seed=0)
    frame = pd.read_csv(f"{data_dir}/{ICU_RELATIVE_PATH}")
    frame = frame[frame[ICU_TARGET].notna()]
    test = frame.loc[splits.source_rows["test"]]
    rows = unit_error_frames(test[list(ICU_FEATURES)])["unit_errors"] if shift else test[list(ICU_FEATURES)]
    labels = test.loc[rows.index, ICU_TARGET].astype(int).tolist()
    cases = []
    for rec, label in zip(rows.to_dict(orient="records"), labels, strict=True):
        clean = {
            k: (v.item() if hasattr(v, "item") else v)
            for k, v in rec.items()
            if not (isinstance(v, float) and math.isnan(v)) and v is not None and not pd.isna(v)
        }
        cases.append((clean, label))
    return cases


def drive(
    url: str,
    model: str,
    make: Callable[[random.Random], dict[str, Any]],
    seconds: float,
    rate: float,
    *,
    batch: int = 8,
    samples: int | None = None,
    token: str | None = None,
    seed: int = 0,
    max_requests: int = MAX_REQUESTS_PER_PHASE,
    outcome: Outcome | None = None,
    cases: list[Case] | None = None,
) -> dict[str, int]:
    """Send `rate` requests/s of `batch` instances for `seconds` (at most `max_requests`); with
    `outcome`, report an outcome for every answered prediction right away (POST .../feedback). With
    `cases` (real patients and their real outcomes, cycled in order) the instances come from there and
    each one's observed outcome is reported.

    Returns counts of ok / failed requests, of OOD-flagged predictions and of accepted outcomes.
    """
    rng = random.Random(seed)
    endpoint = f"{url.rstrip('/')}/v1/models/{model}:predict"
    feedback = f"{url.rstrip('/')}/v1/models/{model}/feedback"
    stats = {"requests": 0, "ok": 0, "failed": 0, "predictions": 0, "ood": 0, "outcomes": 0}
    deadline = time.monotonic() + seconds
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    at = 0
    while time.monotonic() < deadline and stats["requests"] < max_requests:
        observed: list[Any] | None = None
        if cases:
            chosen = [cases[(at + k) % len(cases)] for k in range(batch)]
            at += batch
            body: dict[str, Any] = {"instances": [c[0] for c in chosen]}
            observed = [c[1] for c in chosen]
        else:
            body = {"instances": [make(rng) for _ in range(batch)]}
        params: dict[str, Any] = {"seed": rng.randrange(2**31)}
        if samples:
            params["samples"] = samples
        body["parameters"] = params
        stats["requests"] += 1
        try:
            out = _request(endpoint, body, token, timeout=30.0)
            preds = out.get("predictions", [])
            stats["ok"] += 1
            stats["predictions"] += len(preds)
            stats["ood"] += sum(1 for p in preds if p.get("ood"))
            if (outcome is not None or observed is not None) and preds:
                if observed is not None:
                    values = observed
                else:
                    assert outcome is not None
                    values = [outcome(p, rng) for p in preds]
                reported = [
                    {"prediction_id": p["prediction_id"], "value": v}
                    for p, v in zip(preds, values, strict=True)
                ]
                answer = _request(feedback, {"outcomes": reported}, token, timeout=30.0)
                stats["outcomes"] += len(answer.get("accepted", []))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            stats["failed"] += 1
            if stats["failed"] <= 3:
                print(f"request failed: {exc}", file=sys.stderr)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return stats


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=DEFAULT_URL, help="service base URL (default: %(default)s)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seconds", type=float, default=60.0, help="duration of each phase")
    p.add_argument("--rate", type=float, default=5.0, help="requests per second")
    p.add_argument("--batch", type=int, default=8, help="instances per request")
    p.add_argument("--samples", type=int, default=None, help="posterior samples per request")
    p.add_argument("--token", default=None, help="bearer token when auth is on")
    p.add_argument("--manifest", default=None, help="read features from this manifest.json instead")
    p.add_argument("--phases", default="in,shift", help="comma list of phases: in, shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--outcomes",
        action="store_true",
        help="also report simulated outcomes (binary models): drawn from the model's probability in the"
        " in phase, from 1 - it in the shift phase, so realized performance falls under shift",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="icu-mortality only: send real SUPPORT2 test patients with their real outcomes (phase in),"
        " and the same patients with one unit error each (phase shift); needs the lrbnn package",
    )
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.seconds <= 0 or args.seconds > 3600:
        p.error("--seconds must be in (0, 3600]")
    if args.rate <= 0 or args.rate > 200:
        p.error("--rate must be in (0, 200]")
    if not set(args.phases.split(",")) <= {"in", "shift"}:
        p.error("--phases takes in and/or shift")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_dir and args.model != DEFAULT_MODEL:
        raise SystemExit("--data-dir sends real SUPPORT2 patients: only for --model icu-mortality")
    if args.manifest:
        with open(args.manifest, encoding="utf-8") as fh:
            features = features_from_manifest(json.load(fh))
    else:
        features = features_from_service(args.url, args.model, args.token)
    makers = {
        "in": lambda rng: in_distribution(features, rng),
        "shift": lambda rng: shifted(features, rng),
    }
    for i, phase in enumerate(args.phases.split(",")):
        cases = icu_cases(args.data_dir, shift=phase == "shift") if args.data_dir else None
        stats = drive(
            args.url,
            args.model,
            makers[phase],
            args.seconds,
            args.rate,
            batch=args.batch,
            samples=args.samples,
            token=args.token,
            seed=args.seed + i,
            outcome=(calibrated_outcome if phase == "in" else reversed_outcome) if args.outcomes else None,
            cases=cases,
        )
        frac = stats["ood"] / stats["predictions"] if stats["predictions"] else 0.0
        counts = " ".join(f"{k}={v}" for k, v in stats.items())
        print(f"phase={phase} {counts} ood_fraction={frac:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
