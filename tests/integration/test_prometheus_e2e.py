"""End to end: the real service scraped every 1 s by a real Prometheus with the repo's rules.

Why: promtool only proves the PromQL parses; this proves every dashboard and rule expression evaluates
against the metrics the service really exports (names, labels, histogram buckets), that the core panels
show data, and that shifted traffic drives the drift alert to pending/firing. Loopback only, ~2 min.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))
from deploy_helpers import dashboard_exprs, load_script, rule_exprs  # noqa: E402

from service.testing import ServerNotReady, free_port, wait_until_ready  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "icu-mortality"
REPO = Path(os.environ.get("LRBNN_E2E_MODEL_REPOSITORY", ROOT / "deploy" / "models"))
LRBNN = Path(sys.executable).parent / "lrbnn"


def _get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body[:1] in (b"{", b"[") else body
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(url: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_until_ready(url, proc, log, timeout_s=timeout, interval_s=0.5)
    except ServerNotReady as exc:
        pytest.fail(f"{proc.args!r}: {exc}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    prom_bin = shutil.which("prometheus")
    if prom_bin is None:
        pytest.skip("prometheus not installed (apt package prometheus, .ci/install-system-deps.sh)")
    if not LRBNN.exists():
        pytest.skip("lrbnn console script missing (pip install .[serve])")
    manifest = REPO / MODEL / "1" / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"bundled model missing: {manifest}")
    tmp = tmp_path_factory.mktemp("e2e")
    svc_port, prom_port = free_port(), free_port()
    env = dict(
        os.environ,
        LRBNN_DRIFT_WINDOW="200",
        LRBNN_DEVICE="cpu",
        LRBNN_API_TOKENS="",
        LRBNN_STATE_DIR=str(tmp / "state"),  # a store of its own: only this test's outcomes
    )
    env.pop("LRBNN_API_TOKENS")
    svc_log = tmp / "service.log"
    svc = subprocess.Popen(
        [
            str(LRBNN),
            "serve",
            "--model-repository",
            str(REPO),
            "--host",
            "127.0.0.1",
            "--port",
            str(svc_port),
        ],
        stdout=svc_log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    procs = [svc]
    try:
        svc_url = f"http://127.0.0.1:{svc_port}"
        _wait(f"{svc_url}/readyz", 90, svc, svc_log)

        # The repo's rules; the alerts with `for: 2s` so the test need not wait 10 minutes.
        rules = tmp / "rules"
        rules.mkdir()
        src = ROOT / "deploy" / "prometheus" / "rules"
        shutil.copy(src / "recording.yml", rules / "recording.yml")
        alerts = yaml.safe_load((src / "alerts.yml").read_text())
        for group in alerts["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                rule["for"] = "2s"
        (rules / "alerts.yml").write_text(yaml.safe_dump(alerts, sort_keys=False))
        rec = yaml.safe_load((rules / "recording.yml").read_text())
        for group in rec["groups"]:
            group["interval"] = "1s"
        (rules / "recording.yml").write_text(yaml.safe_dump(rec, sort_keys=False))
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules / "recording.yml"), str(rules / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "lrbnn", "static_configs": [{"targets": [f"127.0.0.1:{svc_port}"]}]}
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        prom_log = tmp / "prometheus.log"
        prom = subprocess.Popen(
            [
                prom_bin,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=prom_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{prom_port}"
        _wait(f"{prom_url}/-/ready", 30, prom, prom_log)
        yield {"service": svc_url, "prometheus": prom_url, "manifest": str(manifest)}
    finally:
        for p in reversed(procs):
            _stop(p)


def _query(prom: str, expr: str) -> dict[str, Any]:
    status, doc = _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), 10)
    assert status == 200 and isinstance(doc, dict) and doc["status"] == "success", (expr, status, doc)
    return doc["data"]


def _drift_alert_state(prom: str) -> str | None:
    return _alert_state(prom, "LrbnnUncertaintyDrift")


def _alert_state(prom: str, name: str) -> str | None:
    _, doc = _get(f"{prom}/api/v1/alerts")
    for a in doc["data"]["alerts"]:
        if a["labels"].get("alertname") == name and a["labels"].get("model") == MODEL:
            return str(a["state"])
    return None


def test_dashboards_and_rules_against_real_prometheus(stack: dict[str, str]) -> None:
    demo = load_script("demo_shift")
    features = demo.features_from_manifest(json.loads(Path(stack["manifest"]).read_text()))
    prom = stack["prometheus"]

    ind = demo.drive(
        stack["service"],
        MODEL,
        lambda r: demo.in_distribution(features, r),
        20,
        4,
        seed=1,
        outcome=demo.calibrated_outcome,
    )
    assert ind["ok"] > 10 and ind["failed"] == 0, ind
    assert ind["outcomes"] == ind["predictions"], ind
    time.sleep(3)  # a scrape and a rule evaluation after the phase
    state_in = _drift_alert_state(prom)

    sh = demo.drive(
        stack["service"],
        MODEL,
        lambda r: demo.shifted(features, r),
        30,
        4,
        seed=2,
        outcome=demo.reversed_outcome,
    )
    assert sh["ok"] > 10 and sh["failed"] == 0 and sh["outcomes"] == sh["predictions"], sh
    assert sh["ood"] / sh["predictions"] > ind["ood"] / ind["predictions"], (ind, sh)

    # The drift alert goes pending/firing on the shifted traffic.
    deadline = time.monotonic() + 20
    state = _drift_alert_state(prom)
    while state not in ("pending", "firing") and time.monotonic() < deadline:
        time.sleep(1)
        state = _drift_alert_state(prom)
    psi = _query(prom, f'lrbnn_uncertainty_drift{{model="{MODEL}",statistic="psi"}}')["result"]
    assert state in ("pending", "firing"), (
        f"drift alert state {state} (after in-distribution: {state_in}); {psi}"
    )
    # The outcomes of the shifted patients contradict the model: realized calibration and coverage
    # alerts go pending/firing (the realized window is mostly the shifted phase's outcomes).
    for alert in ("LrbnnRealizedCalibrationPoor", "LrbnnCoverageBelowNominal", "LrbnnFeatureDrift"):
        deadline = time.monotonic() + 20
        got = _alert_state(prom, alert)
        while got not in ("pending", "firing") and time.monotonic() < deadline:
            time.sleep(1)
            got = _alert_state(prom, alert)
        realized = _query(prom, f'lrbnn_realized_performance{{model="{MODEL}"}}')["result"]
        assert got in ("pending", "firing"), f"{alert}: {got}; {realized}"

    # Every expression evaluates; the core ones return data.
    exprs = dashboard_exprs(rate_interval="30s", model=MODEL) + rule_exprs()
    empty = []
    for where, expr in exprs:
        if not _query(prom, expr)["result"]:
            empty.append((where, expr))
    core = {
        "request rate": "sum by (endpoint) (rate(lrbnn_request_duration_seconds_count",
        "p99": "histogram_quantile(0.99, sum by (le) (rate(lrbnn_request_duration_seconds_bucket",
        "drift": 'lrbnn_uncertainty_drift{model="icu-mortality",statistic="psi"}',
        "OOD rate": "max(lrbnn_ood_rate",
        "recorded request rate": "sum by (model) (rate(lrbnn_request_duration_seconds_count[5m]))",
        "realized accuracy": 'max(lrbnn_realized_performance{model="icu-mortality",metric="accuracy"})',
        "estimated accuracy": 'max(lrbnn_estimated_performance{model="icu-mortality",metric="accuracy"})',
        "coverage": 'lrbnn_realized_performance{model="icu-mortality",metric=~"set_coverage|',
        "outcomes arriving": 'sum(rate(lrbnn_outcomes_total{model="icu-mortality"}',
        "feature drift": 'topk(5, max by (feature) (lrbnn_feature_drift{model="icu-mortality",statistic=',
    }
    empty_exprs = {e for _, e in empty}
    for name, needle in core.items():
        matching = [e for _, e in exprs if needle in e]
        assert matching, f"no expression for {name}"
        assert not empty_exprs.intersection(matching), f"{name} returned no data: {matching}"
    print(f"drift alert after in-distribution: {state_in}, after shift: {state}")
    print(f"{len(exprs)} expressions evaluated, {len(empty)} empty (e.g. no errors/rejections yet):")
    for where, e in empty:
        print(f"  empty: {where}: {e}")
