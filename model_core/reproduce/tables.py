"""Markdown tables in the paper's layout: one row per method, mean ± std over seeds, the paper beside."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from model_core.reproduce.paper import paper_dataset, paper_value
from model_core.reproduce.runner import RunRecord, TaskResults


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def _paper(task: str, method: str, metric: str) -> str:
    value, std = paper_value(task, method, metric)
    if value is None:
        return "—"
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"


#: Metrics whose paper counterpart is another quantity: none shown (the paper has no near-OOD set, and
#: our raw-interval coverage has no printed counterpart).
NO_PAPER_COUNTERPART = ("ood_near.", "test.picp_raw")


def _paper_key(metric: str) -> str | None:
    """The paper-number key of ``section.key``, or None where the paper has nothing comparable."""
    if metric.startswith(NO_PAPER_COUNTERPART):
        return None
    return metric.split(".", 1)[1]


def aggregate(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[r.method].append(r)
    return groups


def summary_rows(results: TaskResults) -> list[dict[str, Any]]:
    """One dict per method: parameters, seconds, each metric's mean/std (what results.json keeps)."""
    rows = []
    for method, runs in aggregate(results.runs).items():
        row: dict[str, Any] = {
            "method": method,
            "seeds": len(runs),
            "params": runs[0].params,
            "train_seconds_mean": statistics.fmean(r.train_seconds for r in runs),
        }
        for metric in results.config.metrics:
            vals = [v for r in runs if (v := r.metric(metric)) is not None]
            row[metric] = {
                "mean": statistics.fmean(vals) if vals else None,
                "std": statistics.stdev(vals) if len(vals) > 1 else None,
                "n": len(vals),
            }
        rows.append(row)
    return rows


def markdown_table(results: TaskResults) -> str:
    cfg = results.config
    task = cfg.task
    header = ["method", "seeds", "params", "train s"]
    for m in cfg.metrics:
        header += [m, f"paper {_paper_key(m) or '—'}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, runs in aggregate(results.runs).items():
        paper_params = paper_value(task, method, "params")[0]
        params = f"{runs[0].params:,}" + (f" (paper {paper_params:,.0f})" if paper_params else "")
        seeds_run = ",".join(str(s) for s in sorted({r.seed for r in runs}))
        cells = [method, seeds_run, params, f"{statistics.fmean(r.train_seconds for r in runs):.0f}"]
        for m in cfg.metrics:
            vals = [v for r in runs if (v := r.metric(m)) is not None]
            key = _paper_key(m)
            cells += [_fmt(vals), _paper(task, method, key) if key else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({r.seed for r in results.runs})
    note = (
        f"\nUp to {len(seeds)} seed(s) per method (column seeds: which ran); mean ± std over them; "
        f"S = {16 if results.quick else cfg.samples} Monte Carlo samples; "
        f"ECE with 15 equal-width confidence bins; paper column: {paper_dataset(task)} "
        "(a different data set where it is "
        "not ours); — = not reported."
    )
    return "\n".join(lines) + "\n" + note + "\n"


def sweep_table(results: TaskResults) -> str:
    if not results.sweep:
        return ""
    by_rank: dict[int, list[RunRecord]] = defaultdict(list)
    for r in results.sweep:
        by_rank[int(r.rank or 0)].append(r)
    metrics = [
        m for m in results.config.metrics if m in ("test.auroc", "test.nll", "test.mae", "ood.ood_auroc")
    ]
    header = ["rank", "params", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank in sorted(by_rank):
        runs = by_rank[rank]
        cells = [str(rank), f"{runs[0].params:,}"]
        cells += [_fmt([v for r in runs if (v := r.metric(m)) is not None]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spectrum_table(results: TaskResults) -> str:
    if not results.spectrum:
        return ""
    lines = [
        "| layer | shape | rank used | tail energy Σ_{i>r} σ_i² | tail fraction | rank for 99 % energy |",
        "|---|---|---|---|---|---|",
    ]
    for row in results.spectrum:
        lines.append(
            f"| {row['layer']} | {row['shape'][0]}×{row['shape'][1]} | {row['rank_used']} | "
            f"{row['tail_energy']:.3f} | {row['tail_fraction']:.3f} | {row['effective_rank_99']} |"
        )
    return "\n".join(lines) + "\n"


#: The OOD decision's columns (``model_core.evaluation.shift_report``): threshold-free AUROC of each
#: detector and of the combined p-value, then detection rates at the stated false-alarm level.
TRUST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ood_auroc", "AUROC epistemic"),
    ("novelty_auroc", "AUROC novelty"),
    ("combined_auroc", "AUROC combined"),
    ("detect_epistemic", "detected: epistemic alone"),
    ("detect_novelty", "detected: novelty alone"),
    ("flag_rate_out", "detected: combined decision"),
    ("flag_rate_in", "false alarms on test (combined)"),
)


def _shift_sections(results: TaskResults) -> list[str]:
    """The evaluated shift sets (``ood``, ``ood_near``, ``ood_<constructed>``), in a stable order."""
    names = {k for r in results.runs for k, v in r.metrics.items() if k.startswith("ood") and v}
    return sorted(names, key=lambda k: (k != "ood", k != "ood_near", k))


def trust_table(results: TaskResults) -> str:
    """One row per (shift set, method): how each detector and the served OOD decision do on it."""
    sections = _shift_sections(results)
    if not sections:
        return ""
    header = ["shift set", "method", *(label for _, label in TRUST_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for section in sections:
        for method, runs in aggregate(results.runs).items():
            cells = [section, method]
            for key, _ in TRUST_COLUMNS:
                cells.append(_fmt([v for r in runs if (v := r.metric(f"{section}.{key}")) is not None]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def conformal_table(results: TaskResults) -> str:
    """Coverage of the split-conformal interval or prediction set on the test split, per method."""
    keys = sorted({k for r in results.runs for k in r.metrics.get("conformal", {}) if k != "level"})
    if not keys:
        return ""
    header = ["method", "level", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, runs in aggregate(results.runs).items():
        level = runs[0].metric("conformal.level")
        cells = [method, "—" if level is None else f"{level:.2f}"]
        cells += [_fmt([v for r in runs if (v := r.metric(f"conformal.{k}")) is not None]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
