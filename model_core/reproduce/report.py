"""results.json and results.md for a reproduction run."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from model_core.reproduce.paper import paper_dataset
from model_core.reproduce.runner import TaskResults, results_to_json
from model_core.reproduce.tables import (
    conformal_table,
    markdown_table,
    spectrum_table,
    summary_rows,
    sweep_table,
    trust_table,
)


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``None``: results.json is read by other tools (jq, JavaScript,
    pandas' strict parsers), and RFC 8259 JSON has no NaN. An undefined metric (the deterministic
    network's MI ratio 0/0) is ``null`` there; ``results.partial.json`` keeps the floats for ``--merge``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return strict_json(obj.item())
    return obj


def write_report(all_results: list[TaskResults], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    payload = {
        "machine": machine,
        "tasks": {r.config.task: {**results_to_json(r), "summary": summary_rows(r)} for r in all_results},
    }
    js = out / "results.json"
    js.write_text(json.dumps(strict_json(payload), indent=1, allow_nan=False))
    parts = [f"# Reproduction results\n\nMachine: {machine}.\n"]
    for r in all_results:
        parts.append(f"## {r.config.task} (paper: {paper_dataset(r.config.task)})\n")
        parts.append(markdown_table(r))
        trust = trust_table(r)
        if trust:
            parts.append(
                f"\n### OOD decision ({r.config.task}): each detector and the combined flag\n\n" + trust
            )
        conformal = conformal_table(r)
        if conformal:
            parts.append(f"\n### Conformal coverage on test ({r.config.task})\n\n" + conformal)
        if r.sweep:
            parts.append(f"\n### Rank sweep ({r.config.task}, low-rank)\n\n" + sweep_table(r))
        if r.spectrum:
            parts.append("\n### Spectra of the trained deterministic weights (Eckart–Young tail)\n\n")
            parts.append(spectrum_table(r))
        figs = sorted((out / r.config.task / "figures").glob("*.png"))
        if figs:
            parts.append("\nFigures: " + ", ".join(f"`{p.relative_to(out)}`" for p in figs) + "\n")
    md = out / "results.md"
    md.write_text("\n".join(parts))
    return md, js
