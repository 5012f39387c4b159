"""The published numbers (``paper_numbers.json``, extracted from the paper's LaTeX source; see
``docs/paper_numbers.md``). MIMIC-III and SST-2 are not available here, so for ICU and sentiment the
paper's column is a reference point on a different data set, never a number we claim to reproduce."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

#: Our metric keys -> the JSON's keys where they differ.
ALIASES = {"score_ratio": "mi_ratio"}


@cache
def paper_numbers() -> dict[str, Any]:
    text = resources.files("model_core.reproduce").joinpath("paper_numbers.json").read_text()
    return dict(json.loads(text))


def paper_value(task: str, method: str, metric: str) -> tuple[float | None, float | None]:
    """(value, std) as printed in the paper, or (None, None)."""
    methods = paper_numbers().get("tasks", {}).get(task, {}).get("methods", {})
    row = methods.get(method, {})
    key = ALIASES.get(metric, metric)
    if key == "params":
        key = "params_numeric"
    value = row.get(key)
    std = row.get(f"{key}_std")
    return (
        float(value) if isinstance(value, (int, float)) else None,
        float(std) if isinstance(std, (int, float)) else None,
    )


def paper_dataset(task: str) -> str:
    return str(paper_numbers().get("tasks", {}).get(task, {}).get("dataset", "?"))
