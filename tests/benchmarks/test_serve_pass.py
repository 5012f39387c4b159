"""``benchmarks/serve_pass.py`` runs every variant on the bundled ICU checkpoint and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_modules import ROOT, load_benchmark

sp = load_benchmark("serve_pass.py", "serve_pass")


def test_every_variant_is_timed_and_recorded(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pass.json"
    args = ["--checkpoint", str(ROOT / "deploy/models/icu-mortality/1"), "--samples", "4", "--rows", "1", "3"]
    assert sp.main([*args, "--loops", "20", "--repeats", "1", "--json-out", str(out)]) == 0
    doc = json.loads(out.read_text())
    got = {(r["rows"], r["samples"], r["variant"]) for r in doc["results"]}
    for rows in (1, 3):
        for variant in ("predict", "plan", "summary (row-wise)", "summary (vectorised)"):
            assert (rows, 4, variant) in got
    assert all(r["us_per_call"] > 0 for r in doc["results"])
    assert "us/row" in capsys.readouterr().out  # the table is printed too


def test_best_of_repeats_is_the_least_disturbed_loop(monkeypatch) -> None:
    clock = iter([0.0, 5.0, 10.0, 12.0, 20.0, 21.0])  # three timed loops of 5, 2 and 1 seconds
    monkeypatch.setattr(sp.time, "process_time", lambda: next(clock))
    calls: list[int] = []
    assert sp.best_us(lambda: calls.append(1), loops=4, repeats=3) == 1.0 / 4 * 1e6
    assert len(calls) == 10 + 3 * 4  # the warm-up, then every timed call
