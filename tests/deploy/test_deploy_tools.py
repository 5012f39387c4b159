"""Every deployment artefact checked by the real tool for it (hadolint, compose, kubernetes-validate,
promtool). Skipped, with the reason, only when the tool binary is missing; CI installs them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY, ROOT, dashboard_exprs, rule_exprs, tool


def _run(cmd: list[str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.parametrize(
    "dockerfile", ["Dockerfile", "deploy/cuda.Dockerfile", "deploy/prometheus/Dockerfile.debian"]
)
def test_hadolint_dockerfile(dockerfile: str) -> None:
    _run([tool("hadolint"), "--failure-threshold", "info", dockerfile])


def test_dockerfile_essentials() -> None:
    """Why: the properties the issue requires but hadolint does not enforce."""
    text = (ROOT / "Dockerfile").read_text()
    cuda = (ROOT / "deploy" / "cuda.Dockerfile").read_text()
    assert "AS cuda" in cuda and "nvidia/cuda:" in cuda and "USER 10001" in cuda
    assert "download.pytorch.org/whl/cpu" in text and "TORCH_VERSION=2.13.0" in text
    runtime = text.split("AS runtime\n", 1)[1].split("\nFROM ", 1)[0]
    assert "HEALTHCHECK" in runtime and "/livez" in runtime and "USER 10001" in runtime
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert "FROM runtime AS slim" in froms and "FROM runtime AS cpu" in froms
    # offline builds by build arguments, for the classic builder too (no frontend pull, no mounts)
    assert "ARG PYTHON_IMAGE=python:" in text and "ARG WHEELHOUSE=deploy/wheelhouse" in text
    assert "--no-index --find-links /wheels" in text
    code = [line for line in text.splitlines() if not line.startswith("#")]
    assert not text.startswith("# syntax") and not [line for line in code if "--mount" in line]
    # only the venv and the models reach the runtime stages: no wheelhouse, no CA bundle of the host
    for stage in ("slim", "cpu"):
        body = text.split(f"AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        copies = [line for line in body.splitlines() if line.startswith("COPY")]
        assert copies and all("/opt/venv" in c or "/models" in c for c in copies), copies
    assert "LRBNN_BACKEND=onnx" in text.split("AS slim\n", 1)[1].split("\nFROM ", 1)[0]
    assert "COPY --chown=root:root deploy/models /models" in text
    assert "lrbnn train" not in text
    # the last stage is the default build target: it must be the CPU image
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")]
    assert stages[-1] == "cpu"
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".venv" in ignore and "!deploy/models" in ignore


def _compose_config(args: list[str], env_file: Path) -> dict[str, Any]:

    cmd = [tool("docker-compose"), *args, "config", "--format", "json"]
    env = {**os.environ, "LRBNN_ENV_FILE": str(env_file)}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return dict(json.loads(res.stdout))


@pytest.mark.parametrize(
    ("profiles", "files"),
    [
        ([], []),
        (["gpu", "alerting"], []),
        ([], ["deploy/compose.local.yml"]),
        (["gpu", "alerting"], ["deploy/compose.local.yml"]),
    ],
)
def test_compose_config(profiles: list[str], files: list[str], tmp_path: Path) -> None:
    env_file = tmp_path / "lrbnn.env"
    env_file.write_text("LRBNN_API_TOKENS=t0ken\n")
    args = [a for f in ["docker-compose.yml", *files] for a in ("-f", f)]
    args += [a for p in profiles for a in ("--profile", p)]
    cfg = _compose_config(args, env_file)
    services = cfg["services"]
    assert {"lrbnn", "prometheus", "grafana"} <= set(services)
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" in services["grafana"]["environment"]
    assert services["prometheus"]["depends_on"]["lrbnn"]["condition"] == "service_healthy"
    # the service listens on all interfaces inside the network: tokens from the env file, no opt-out
    lrbnn = services["lrbnn"]
    assert lrbnn["environment"]["LRBNN_API_TOKENS"] == "t0ken"
    assert "LRBNN_ALLOW_UNAUTHENTICATED" not in lrbnn["environment"]
    assert lrbnn["image"] == _make_vars()["IMAGE_CPU"] and lrbnn["read_only"] is True
    if files:
        assert services["prometheus"]["image"] == "lrbnn-prometheus:debian"
        assert services["prometheus"]["build"]["dockerfile"] == "Dockerfile.debian"
    if "gpu" in profiles:
        assert services["lrbnn-gpu"]["environment"]["LRBNN_API_TOKENS"] == "t0ken"
        dev = services["lrbnn-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
        assert dev["capabilities"] == ["gpu"]
        assert "alertmanager" in services


def test_compose_refuses_a_missing_token_file(tmp_path: Path) -> None:
    """Why: without the env file the stack would start a server that refuses to serve; compose says so."""

    cmd = [tool("docker-compose"), "config", "--format", "json"]
    env = {**os.environ, "LRBNN_ENV_FILE": str(tmp_path / "absent.env")}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode != 0 and "absent.env" in res.stderr


def _make_vars() -> dict[str, str]:
    """The image tags `make image` builds, as make itself prints them."""
    res = _run(["make", "-s", "print-image-tags"])
    return dict(line.split("=", 1) for line in res.stdout.split())


def test_manifests_reference_the_tags_make_image_builds() -> None:
    tags = _make_vars()
    assert tags["IMAGE_CPU"].endswith("-cpu") and tags["IMAGE_SLIM"].endswith("-slim")
    cpu = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    gpu = yaml.safe_load((DEPLOY / "k8s" / "gpu" / "deployment.yaml").read_text())
    kserve = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert cpu["spec"]["template"]["spec"]["containers"][0]["image"] == tags["IMAGE_CPU"]
    assert gpu["spec"]["template"]["spec"]["containers"][0]["image"] == tags["IMAGE_CUDA"]
    assert kserve["spec"]["predictor"]["containers"][0]["image"] == tags["IMAGE_CPU"]
    for dep in (cpu, gpu):  # tokens from a Secret, never a literal, and no opt-out
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["LRBNN_API_TOKENS"]["valueFrom"]["secretKeyRef"]["name"] == "lrbnn-api-tokens"
        assert "LRBNN_ALLOW_UNAUTHENTICATED" not in env


def test_kubernetes_validate_strict() -> None:
    """Core manifests must pass --strict; CRDs without a bundled schema are reported as skipped."""
    files = sorted(
        str(p.relative_to(ROOT)) for p in (DEPLOY / "k8s").rglob("*.yaml") if "helm" not in p.parts
    )
    files += sorted(str(p.relative_to(ROOT)) for p in (DEPLOY / "kserve").glob("*.yaml"))
    res = _run([tool("kubernetes-validate"), "--strict", *files])
    out = res.stdout + res.stderr
    for f in files:
        assert f in out
    passed = [f for f in files if f"{f} passed" in out]
    skipped = [line for line in out.splitlines() if "Couldn't find schema" in line]
    # every built-in kind is validated; only CRDs (KServe) may lack a schema
    assert all("serving.kserve.io" in line for line in skipped), skipped
    assert len(passed) + len(skipped) >= len(files)
    for line in skipped:
        print(f"SKIPPED (no schema bundled for this CRD): {line}")


def test_k8s_deployment_essentials() -> None:
    for path in [DEPLOY / "k8s" / "deployment.yaml", DEPLOY / "k8s" / "gpu" / "deployment.yaml"]:
        dep = yaml.safe_load(path.read_text())
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["lifecycle"]["preStop"]
        assert pod["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert any(v["mountPath"] == "/tmp" for v in c["volumeMounts"])
        assert c["resources"]["limits"]
    gpu = yaml.safe_load((DEPLOY / "k8s" / "gpu" / "deployment.yaml").read_text())
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    hpa = yaml.safe_load((DEPLOY / "k8s" / "hpa.yaml").read_text())
    assert hpa["apiVersion"] == "autoscaling/v2"
    kinds = {m["type"] for m in hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}


def test_promtool_check_config() -> None:
    _run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=DEPLOY / "prometheus")


def test_promtool_check_rules() -> None:
    rules = sorted(str(p) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    _run([tool("promtool"), "check", "rules", *rules])


def test_promtool_test_rules() -> None:
    res = _run([tool("promtool"), "test", "rules", "tests/alerts_test.yml"], cwd=DEPLOY / "prometheus")
    assert "SUCCESS" in res.stdout + res.stderr


def test_alert_tests_cover_every_alert_both_ways() -> None:
    """Why: each alert needs a case where it fires and one where it stays silent."""
    alerts = {n.split(":", 1)[1] for n, _ in rule_exprs() if n.startswith("alerts.yml")}
    doc = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "alerts_test.yml").read_text())
    fires: set[str] = set()
    silent: set[str] = set()
    for t in doc["tests"]:
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert alerts == fires, alerts ^ fires
    assert alerts == silent, alerts ^ silent


def test_alert_annotations_actionable() -> None:
    for path in [DEPLOY / "prometheus" / "rules" / "alerts.yml"]:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                ann = rule["annotations"]
                assert ann["summary"] and len(ann["description"]) > 100, rule["alert"]
                assert rule["labels"]["severity"] in {"warning", "critical"}


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    """Every dashboard query and rule expression is valid PromQL (promtool parses it as a rule)."""
    exprs = dashboard_exprs() + rule_exprs()
    assert len(exprs) > 20
    doc = {
        "groups": [
            {
                "name": "all-expressions",
                "rules": [{"record": f"check:expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    _run([tool("promtool"), "check", "rules", str(path)])


def test_dashboard_structure() -> None:
    import json

    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "lrbnn.json").read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    var = dash["templating"]["list"][0]
    assert var["name"] == "model" and "label_values(lrbnn_model_info, model)" in var["definition"]
    rows = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert rows == {
        "Traffic",
        "Latency",
        "Uncertainty",
        "Drift",
        "Outcomes and realized performance",
        "Model info",
    }
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = " ".join(e for _, e in dashboard_exprs())
    for metric in [
        "lrbnn_request_duration_seconds",
        "lrbnn_requests_rejected_total",
        "lrbnn_queue_wait_seconds",
        "lrbnn_inference_duration_seconds",
        "lrbnn_batch_size",
        "lrbnn_inflight_requests",
        "lrbnn_predictive_variance",
        "lrbnn_epistemic_uncertainty",
        "lrbnn_ood_score",
        "lrbnn_ood_rate",
        "lrbnn_uncertainty_drift",
        "lrbnn_model_info",
        "lrbnn_realized_performance",
        "lrbnn_estimated_performance",
        "lrbnn_outcomes_total",
        "lrbnn_outcome_delay_seconds",
        "lrbnn_store_predictions_total",
        "lrbnn_feature_drift",
    ]:
        assert metric in exprs, metric
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "lrbnn-prometheus"
