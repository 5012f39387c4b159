"""Schemathesis over the service's own OpenAPI document, shared by the CI test and the benchmark.

``fuzz(app, cases)`` draws ``cases`` requests (positive and negative generation, every operation),
sends each through the in-process ASGI transport and runs every schemathesis check on the answer
(``not_a_server_error``, status code / content type / header / response schema conformance, negative
data rejection, positive data acceptance, unsupported methods, ...). Failures are collected, not
raised, so a run reports all distinct problems and never spends minutes shrinking.

Half the cases name the served model (``toy``) and, for the admin route, carry the admin token, so
the fuzzer reaches the predict path and the reload path, not only the 404/401 answers.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MODEL = "toy"
SIMPLE_CASES = 1  # per operation without parameters or body (hypothesis finds one distinct request)
ADMIN_TOKEN = "fuzz-admin"

# Checks whose premise does not hold for this API, each with the reason:
# - positive_data_acceptance: a schema-valid body still names features the model does not have
#   (``instances`` is an open mapping of feature -> value), so 422 is the correct answer to most of them.
# - use_after_free / ensure_resource_availability / object_level_authorization: stateful CRUD checks
#   (create/delete resources, other users' objects); this API has no such resources.
EXCLUDED_CHECKS = (
    "positive_data_acceptance",
    "use_after_free",
    "ensure_resource_availability",
    "object_level_authorization",
)


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


def fuzz(app: Any, cases: int, seed: int = 0, model: str = MODEL, version: str = "1") -> FuzzReport:
    """Draw ``cases`` requests against ``app`` (an ASGI app from ``service.app.create_app``)."""
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis.checks import CHECKS, load_all_checks
    from schemathesis.generation import GenerationMode

    load_all_checks()
    checks = [CHECKS.get_one(name) for name in CHECKS.get_all_names() if name not in EXCLUDED_CHECKS]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    wait_loaded(app)
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
        _run_operation(strategy, budget[op.label], seed, checks, report, model, version)
    report.seconds = time.perf_counter() - t0
    return report


def _run_operation(
    strategy: Any, cases: int, seed: int, checks: list[Any], report: FuzzReport, model: str, version: str
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
        if "name" in params and data.draw(st.booleans(), label="real model"):
            params["name"] = model
            if "version" in params:
                params["version"] = version
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
