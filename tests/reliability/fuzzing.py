"""Schemathesis over the service's own OpenAPI document, shared by the CI test and the benchmark.

``fuzz(app, cases)`` draws ``cases`` requests (positive and negative generation, every operation),
sends each through the in-process ASGI transport and runs every schemathesis check on the answer
(``not_a_server_error``, status code / content type / header / response schema conformance, negative
data rejection, positive data acceptance, unsupported methods, ...). Failures are collected, not
raised, so a run reports all distinct problems and never spends minutes shrinking.

The document is read once while the models load (it must be valid then too) and again once they are
served: each served model has its own predict and infer operations with its own request schema
(``service/api/openapi.py``). Half the cases of the routes that keep a ``{name}`` template name a served
model (each in turn, with its served version) and, for the admin route, carry the admin token, so the
fuzzer reaches the metadata and reload paths, not only the 404/401 answers.

By hand, against a model repository (e.g. the bundled one)::

    .venv/bin/python tests/reliability/fuzzing.py --model-repository deploy/models --cases 2000
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SIMPLE_CASES = 1  # per operation without parameters or body (hypothesis finds one distinct request)
ADMIN_TOKEN = "fuzz-admin"

# Checks whose premise does not hold for this API, each with the reason:
# - use_after_free / ensure_resource_availability / object_level_authorization: stateful CRUD checks
#   (create/delete resources, other users' objects); this API has no such resources.
EXCLUDED_CHECKS = (
    "use_after_free",
    "ensure_resource_availability",
    "object_level_authorization",
)
#: Checks left out for one operation (by a suffix of its path), each with the reason:
#: - positive_data_acceptance on FHIR predict: a Bundle's validity (FHIR's own rules, UCUM units, the
#:   model's codes and categories) is not expressible as the JSON schema the fuzzer draws "valid" Bundles
#:   from, so a schema-valid body may rightly be refused; the route's positive and negative cases are
#:   tests/service/test_fhir.py. Every other check (no 500, status codes, content types) still runs.
OPERATION_EXCLUDED_CHECKS = {":predict-fhir": ("positive_data_acceptance",)}
#: answers that reject a schema-violating request, beyond schemathesis' defaults: more instances than
#: the schema's ``maxItems`` (``LRBNN_MAX_INSTANCES``) are refused with the contract's 413
NEGATIVE_REJECTIONS = ("413",)
#: operations whose body is an Open Inference Protocol tensor (the concrete per-model infer paths)
V2_INFER = "/infer"


@dataclass
class FuzzReport:
    cases: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # "check @ operation -> status" -> example

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "seconds": round(self.seconds, 1),
            "statuses": dict(sorted(self.statuses.items())),
            "operations": dict(sorted(self.by_operation.items())),
            "failures": self.failures,
        }


def wait_loaded(app: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not app.state.lrbnn.loaded:
        if time.monotonic() > deadline:
            raise TimeoutError("the models never finished loading")
        time.sleep(0.05)


def served_models(app: Any) -> list[tuple[str, str]]:
    """(name, version) of every model the app serves."""
    return [(m.name, m.version) for m in app.state.lrbnn.repository.models()]


def fuzz(
    app: Any, cases: int, seed: int = 0, model: str | None = None, version: str | None = None
) -> FuzzReport:
    """Draw ``cases`` requests against ``app`` (an ASGI app from ``service.app.create_app``).

    ``{name}`` (and ``{version}``) are pinned to ``model`` (and ``version``) when given, else to each
    served model in turn; the per-model operations cover every served model either way.
    """
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis.checks import CHECKS, load_all_checks
    from schemathesis.config import SchemathesisConfig
    from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
    from schemathesis.generation import GenerationMode

    load_all_checks()
    checks = [CHECKS.get_one(name) for name in CHECKS.get_all_names() if name not in EXCLUDED_CHECKS]
    rejections = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, *NEGATIVE_REJECTIONS]
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejections}}}
    )
    schemathesis.openapi.from_asgi("/openapi.json", app, config=config)  # starts the lifespan; still loading
    wait_loaded(app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)  # with the served models
    pins = [(model, version or "1")] if model is not None else served_models(app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    # Operations without parameters or body have a handful of distinct requests: a few cases each;
    # the rest of the budget is shared by the operations with something to generate.
    simple = [op for op in operations if not op.path_parameters and not list(op.body)]
    rich = [op for op in operations if op.label not in {o.label for o in simple}]
    budget = {op.label: SIMPLE_CASES for op in simple}
    share, extra = divmod(max(0, cases - SIMPLE_CASES * len(simple)), max(1, len(rich)))
    for i, op in enumerate(rich):
        budget[op.label] = share + (1 if i < extra else 0)
    report = FuzzReport()
    t0 = time.perf_counter()
    for op in operations:
        if budget[op.label] <= 0:
            continue
        strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))
        skip = {
            n
            for suffix, names in OPERATION_EXCLUDED_CHECKS.items()
            if op.path.endswith(suffix)
            for n in names
        }
        op_checks = [c for c in checks if c.__name__ not in skip]
        _run_operation(strategy, budget[op.label], seed, op_checks, report, pins)
    report.seconds = time.perf_counter() - t0
    return report


def shape_from_data(case: Any) -> None:
    """A positive V2 infer case: ``shape[0]`` set to the number of rows in ``data``, as a client does.

    The one fact of the request schema JSON Schema cannot state (a relation between two values; it is in
    the schema's description); every other part of the tensor is drawn from the schema as it is.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not case.operation.path.endswith(V2_INFER):
        return
    body = case.body
    tensor = body.get("inputs", [None])[0] if isinstance(body, dict) else None
    if (
        isinstance(tensor, dict)
        and isinstance(tensor.get("data"), list)
        and isinstance(tensor.get("shape"), list)
    ):
        tensor["shape"][0] = len(tensor["data"])


def _run_operation(
    strategy: Any, cases: int, seed: int, checks: list[Any], report: FuzzReport, pins: list[tuple[str, str]]
) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st
    from schemathesis.core.failures import FailureGroup

    @hseed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are recorded, never raised
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, data=st.data())
    def run(case: Any, data: Any) -> None:
        params = case.path_parameters or {}
        if "name" in params and pins and data.draw(st.booleans(), label="real model"):
            params["name"], pinned_version = pins[report.cases % len(pins)]
            if "version" in params:
                params["version"] = pinned_version
        shape_from_data(case)
        headers: dict[str, str] = {}
        if case.operation.path.endswith("/reload") and data.draw(st.booleans(), label="admin"):
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        report.cases += 1
        report.by_operation[case.operation.label] += 1
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # a transport failure is a finding too (e.g. a crash mid-answer)
            report.failures.setdefault(f"transport @ {case.operation.label}", repr(exc)[:500])
            return
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as exc:  # one entry per failed check
            names = sorted({type(f).__name__ for f in exc.exceptions})
            key = f"{','.join(names)} @ {case.operation.label} -> {response.status_code}"
            detail = f"{case.as_curl_command()}\n{str(exc)[:1500]}"
            report.failures.setdefault(key, detail)

    run()


def main(argv: list[str] | None = None) -> int:
    """The by-hand run: fuzz an app over ``--model-repository``; prints the summary as one JSON object."""
    import argparse
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from pydantic import SecretStr

    from service.app import create_app
    from service.settings import Settings

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-repository", default=str(root / "deploy" / "models"))
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = Settings(
        model_repository=Path(args.model_repository), admin_token=SecretStr(ADMIN_TOKEN), log_level="CRITICAL"
    )
    app = create_app(settings)
    report = fuzz(app, args.cases, seed=args.seed)
    server_errors = sum(n for code, n in report.statuses.items() if code >= 500)
    rejected = sum(1 for key in report.failures if "RejectedPositiveData" in key)
    summary = {"models": served_models(app), **report.summary()}
    summary |= {"server_errors": server_errors, "positive_rejected_operations": rejected}
    print(json.dumps(summary, indent=2))
    return 0 if not report.failures and not server_errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
