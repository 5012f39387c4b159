"""The sampling benchmark's output format, its CLI hooks and the GPU check's CPU-only parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_core.sampling.bench import Layer, main_bench_sampling, run_sampling_bench
from model_core.sampling.bench_report import check_targets

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"m", "n", "r", "batch", "samples", "backend", "median_s", "gemm_floor_s", "rng_floor_s", "normals"}


def test_run_sampling_bench_prints_a_table_then_one_json_object() -> None:
    lines: list[str] = []
    result = run_sampling_bench(
        json_out=True,
        quick=True,
        layers=[Layer("tiny", 9, 6, 2)],
        batches=[1, 3],
        samples=[4],
        print_fn=lines.append,
    )
    assert json.loads(lines[-1]) == result
    assert "backend" in lines[0] and "median ms" in lines[0]
    assert set(result) == {"device", "records"} and result["device"].startswith("cpu")
    records = result["records"]
    assert len(records) == 2 * 7
    for rec in records:
        assert set(rec) >= KEYS
        if rec["backend"] == "triton":
            assert rec["median_s"] is None and "CUDA" in rec["skipped"]
        else:
            assert rec["median_s"] > 0 and rec["gemm_floor_s"] > 0 and rec["rng_floor_s"] >= 0
    by = {(r["batch"], r["backend"]): r for r in records}
    assert by[(1, "cached")]["normals"] == 0 and by[(1, "cached")]["rng_floor_s"] == 0
    assert by[(1, "lrt")]["normals"] == 4 * 1 * (2 + 6)
    assert by[(3, "auto")]["chosen"] in {"lrt", "lrt-a", "factored"}


def test_targets_are_computed_from_the_1024_layer() -> None:
    recs = []
    for batch in (1, 16, 256):
        for backend, t in (("auto", 1.0), ("materialize", 30.0), ("factored", 1.2), ("cached", 0.4)):
            recs.append(
                {
                    "m": 1024,
                    "n": 1024,
                    "r": 16,
                    "samples": 512,
                    "batch": batch,
                    "backend": backend,
                    "median_s": t,
                }
            )
            recs[-1].update(gemm_floor_s=0.5, rng_floor_s=0.2)
    verdicts = {t["target"]: t["pass"] for t in check_targets(recs)}
    assert verdicts["N=1: materialize/auto"] and not verdicts["N=1: factored/auto"]
    assert verdicts["N=16: auto/cached"] and verdicts["N=256: auto/(gemm+rng floor)"]


def test_cli_function_and_standalone_script(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--json", "--quick", "--layer", "icu-out", "--batch", "1", "--samples", "32", "--out", str(out)]
    assert main_bench_sampling(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    assert {r["m"] for r in printed["records"]} == {1}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sampling.py"), *args[:-2]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["records"]


def test_gpu_check_script_parses_and_dry_runs(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--samples", "400"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] and result["correctness"] and all(c["pass"] for c in result["correctness"])
    assert "elapsed" in res.stdout.splitlines()[-1]
