"""Schemathesis against the service's own OpenAPI document (bounded: ~300 cases, in-process ASGI).

Every check schemathesis has runs on each answer (see ``fuzzing.EXCLUDED_CHECKS`` for the few whose
premise does not hold here, with the reason): no 5xx, every status and content type documented, every
body matching its documented schema, schema-violating requests rejected, schema-valid requests accepted
(the per-model request schemas). The toy repository has a tabular model; the bundled repository adds a
sequence window and a text model. The big run (5,000 cases) is
``benchmarks/reliability.py fuzz --cases 5000`` (or ``tests/reliability/fuzzing.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzing import ADMIN_TOKEN, fuzz
from reliability_helpers import ROOT
from starlette.responses import Response

CI_CASES = 300
BUNDLED = ROOT / "deploy" / "models"
BUNDLED_CASES = 200


def _app(repo: Path) -> object:
    from pydantic import SecretStr

    from service.app import create_app
    from service.settings import Settings

    return create_app(
        Settings(model_repository=repo, admin_token=SecretStr(ADMIN_TOKEN), log_level="WARNING")
    )


@pytest.mark.timeout(300)
def test_fuzz_the_openapi_document(repo: Path) -> None:
    report = fuzz(_app(repo), CI_CASES, seed=0)
    assert report.cases >= 0.95 * CI_CASES, report.by_operation
    assert not report.failures, "\n\n".join(f"{k}\n{v}" for k, v in report.failures.items())
    # the fuzzer reached the model, not only the 404 of unknown names
    assert report.statuses[200] > 0 and report.statuses[422] + report.statuses[400] > 0, report.statuses
    assert report.by_operation["POST /v1/models/toy:predict"] > 10
    assert report.by_operation["POST /v2/models/toy/versions/1/infer"] > 10


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not BUNDLED.is_dir(), reason="no bundled model repository")
def test_fuzz_the_bundled_models() -> None:
    """The three input kinds (tabular, sequence window, text): every schema-valid request is answered."""
    report = fuzz(_app(BUNDLED), BUNDLED_CASES, seed=0)
    assert not report.failures, "\n\n".join(f"{k}\n{v}" for k, v in report.failures.items())
    assert not [code for code in report.statuses if code >= 500], report.statuses
    for model in ("icu-mortality", "pm25-forecast", "review-sentiment"):
        assert report.by_operation[f"POST /v1/models/{model}:predict"] > 5, report.by_operation
        assert report.by_operation[f"POST /v2/models/{model}/infer"] > 5, report.by_operation


@pytest.mark.timeout(120)
def test_the_fuzzer_can_fail(repo: Path) -> None:
    """A route that answers 500 or an undocumented status is reported (the harness is not a no-op)."""
    app = _app(repo)

    async def broken() -> Response:
        return Response(b"boom", status_code=500, media_type="text/plain")

    app.add_api_route("/broken", broken, methods=["GET"])  # type: ignore[attr-defined]
    report = fuzz(app, 30, seed=1)
    assert any("GET /broken -> 500" in key for key in report.failures), (report.failures, report.by_operation)
