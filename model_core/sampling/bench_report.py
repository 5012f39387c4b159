"""The sampling benchmark's table and its target verdicts (issue #3's CPU ratios, within one run)."""

from __future__ import annotations

from typing import Any


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{1e3 * v:.3f}"


def format_table(records: list[dict[str, Any]]) -> str:
    head = f"{'layer':<16}{'m':>5}{'n':>5}{'r':>3}{'N':>5}{'S':>5} {'backend':<16}{'median ms':>11}"
    head += f"{'gemm ms':>10}{'rng ms':>10}{'normals':>11}  note"
    lines = [head, "-" * len(head)]
    for rec in records:
        backend = rec["backend"] + (f"->{rec['chosen']}" if "chosen" in rec else "")
        note = rec.get("skipped", "")
        lines.append(
            f"{rec['layer']:<16}{rec['m']:>5}{rec['n']:>5}{rec['r']:>3}{rec['batch']:>5}{rec['samples']:>5} "
            f"{backend:<16}{_fmt_ms(rec['median_s']):>11}{_fmt_ms(rec['gemm_floor_s']):>10}"
            f"{_fmt_ms(rec['rng_floor_s']):>10}{rec['normals']:>11}  {note}"
        )
    return "\n".join(lines)


def check_targets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's CPU targets on the 1024×1024 r=16 layer at S=512 (ratios within this run)."""
    by = {
        (rec["batch"], rec["backend"]): rec
        for rec in records
        if rec["m"] == 1024 and rec["n"] == 1024 and rec["r"] == 16 and rec["samples"] == 512
    }
    out: list[dict[str, Any]] = []

    def t(batch: int, backend: str) -> float | None:
        rec = by.get((batch, backend))
        return None if rec is None else rec["median_s"]

    def add(name: str, value: float | None, target: float, higher_is_better: bool = True) -> None:
        ok = None if value is None else (value >= target if higher_is_better else value <= target)
        out.append({"target": name, "value": value, "threshold": target, "pass": ok})

    for batch in (1, 16, 256):
        auto, mat, fac, cached = (
            t(batch, "auto"),
            t(batch, "materialize"),
            t(batch, "factored"),
            t(batch, "cached"),
        )
        if auto:
            add(f"N={batch}: materialize/auto", mat / auto if mat else None, 20.0 if batch == 1 else 5.0)
            add(f"N={batch}: factored/auto", fac / auto if fac else None, 1.3)
            rec = by[(batch, "auto")]
            floor = (rec["gemm_floor_s"] or 0.0) + (rec["rng_floor_s"] or 0.0)
            add(
                f"N={batch}: auto/(gemm+rng floor)",
                auto / floor if floor else None,
                1.5,
                higher_is_better=False,
            )
            if batch in (1, 16):
                add(f"N={batch}: auto/cached", auto / cached if cached else None, 2.0)
    return out


def format_targets(targets: list[dict[str, Any]]) -> str:
    lines = []
    for tgt in targets:
        value = "n/a" if tgt["value"] is None else f"{tgt['value']:.2f}"
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[tgt["pass"]]
        cmp = ">=" if "floor" not in tgt["target"] else "<="
        lines.append(f"{tgt['target']:<36}{value:>8}  (target {cmp} {tgt['threshold']})  {verdict}")
    return "\n".join(lines)
