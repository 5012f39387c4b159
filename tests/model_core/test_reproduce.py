"""``lrbnn reproduce --quick``: the whole experiment path on the real ICU data, tiny budgets."""

import json
import math
from pathlib import Path

import pytest

from model_core.cli.main import main
from model_core.models.spec import Method
from model_core.reproduce.config import TASKS
from model_core.reproduce.paper import paper_value
from model_core.reproduce.runner import merge_results, sweep_ranks


def test_paper_numbers_are_packaged_and_looked_up() -> None:
    value, std = paper_value("icu", "lowrank", "ood_auroc")
    assert value is not None and 0.5 < value < 1.0 and std is not None
    assert paper_value("icu", "lowrank", "params")[0] == 13600
    assert paper_value("icu", "mcdropout", "auroc") == (None, None)  # not in the paper: never invented


def test_sweep_ranks_factorise_only_where_the_rank_fits() -> None:
    assert sweep_ranks(15, [31, 128, 128, 1]) == (15, 15, None)
    assert sweep_ranks(64, [31, 128, 128, 1]) == (None, 64, None)


@pytest.mark.realdata
@pytest.mark.slow
def test_quick_reproduction_writes_tables_plots_and_finite_metrics(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repro"
    assert (
        main(
            [
                "reproduce",
                "--task",
                "icu",
                "--seeds",
                "1",
                "--quick",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    strict = {"parse_constant": lambda c: pytest.fail(f"results.json is not strict JSON: {c}")}
    results = json.loads((out / "results.json").read_text(), **strict)
    icu = results["tasks"]["icu"]
    methods = {r["method"] for r in icu["runs"]}
    assert methods == {m.value for m in Method}
    for run in icu["runs"]:
        for dotted in TASKS["icu"].metrics:
            section, key = dotted.split(".")
            value = run["metrics"][section][key]
            if run["method"] == "deterministic" and key == "score_ratio":
                assert value is None  # MI is exactly 0 in and out: the ratio 0/0 is undefined (null)
                continue
            assert math.isfinite(value), (run["method"], dotted)
        assert run["params"] > 0
    assert len(icu["summary"]) == len(Method)
    assert [r["rank"] for r in icu["rank_sweep"]] == list(TASKS["icu"].rank_sweep[:2])
    assert icu["spectrum"] and all(0.0 <= row["tail_fraction"] <= 1.0 for row in icu["spectrum"])
    md = (out / "results.md").read_text()
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = [line for line in lines[start:end] if line.startswith("| ")]  # the main table only
    header = table[0].split("|")
    rows = [line for line in table if line.split("|")[1].strip() in methods]
    assert len(rows) == len(Method)
    assert all(len(r.split("|")) == len(header) for r in rows)  # every row has every column
    assert "paper ood_auroc" in md
    # the OOD-decision table: every method on the Coma set and on each constructed unit-error set
    trust = [line.split("|") for line in lines if line.startswith(("| ood |", "| ood_unit"))]
    assert {(cells[1].strip(), cells[2].strip()) for cells in trust} >= {
        (section, m) for section in ("ood", "ood_unit_errors") for m in methods
    }
    assert "Conformal coverage on test (icu)" in md and "set_coverage" in md
    for fig in ("reliability", "ood_hist", "selective", "spectrum", "rank_sweep"):
        assert (out / "icu" / "figures" / f"icu_{fig}.png").stat().st_size > 1000


def test_report_only_rebuilds_tables_from_partial_results(tmp_path: Path) -> None:
    from model_core.reproduce.runner import RunRecord, TaskResults, _checkpoint_results

    out = tmp_path / "icu"
    out.mkdir()
    results = TaskResults(TASKS["icu"])
    for seed, auroc in enumerate((0.70, 0.74)):
        results.runs.append(
            RunRecord(
                "icu",
                "lowrank",
                seed,
                15,
                13220,
                1.0,
                3,
                {
                    "test": {"auroc": auroc},
                    "ood": {"score_ratio": float("nan"), "combined_auroc": auroc + 0.1},
                    "conformal": {"level": 0.9, "set_coverage": 0.9 + seed / 100},
                },
            )
        )
    _checkpoint_results(results, out)
    assert main(["reproduce", "--task", "icu", "--report-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| lowrank |"))
    assert "0.720 ± 0.028" in row  # mean and sample std of 0.70 and 0.74
    assert "nan" not in row
    trust = next(line for line in md.splitlines() if line.startswith("| ood | lowrank |"))
    assert trust.split("|")[5].strip() == "0.820 ± 0.028"  # AUROC combined, the fifth column
    conformal = [line for line in md.splitlines() if line.startswith("| lowrank | 0.90 |")]
    assert len(conformal) == 1 and "0.905 ± 0.007" in conformal[0]


def _partial(root: Path, seeds: list[int], methods: list[str]) -> Path:
    """A run directory as ``run_task`` leaves it: results.partial.json plus one array file per run."""
    runs = []
    (root / "arrays").mkdir(parents=True)
    for seed in seeds:
        for method in methods:
            name = f"arrays/{method}-r16-s{seed}.npz"
            (root / name).write_bytes(b"npz")
            metrics = {"test": {"mae": 10.0 + seed}}
            record = {"task": "air", "method": method, "seed": seed, "rank": None, "params": 1}
            runs.append({**record, "train_seconds": 1.0, "epochs_run": 1, "metrics": metrics, "arrays": name})
    payload = {"task": "air", "samples": 150, "quick": False, "runs": runs, "rank_sweep": [], "spectrum": []}
    (root / "results.partial.json").write_text(json.dumps(payload))
    return root


def test_merge_joins_seed_ranges_from_separate_runs(tmp_path: Path) -> None:
    a = _partial(tmp_path / "a", [0, 1], ["lowrank", "deterministic"])
    b = _partial(tmp_path / "b", [1, 2], ["deterministic", "lowrank"])  # seed 1 again: kept once, from a
    merged = merge_results(TASKS["air"], tmp_path / "out", [a, b])
    keys = [(r.seed, r.method) for r in merged.runs]
    assert keys == [(s, m) for s in (0, 1, 2) for m in ("deterministic", "lowrank")]  # config order
    assert len({(r.seed, r.method) for r in merged.runs}) == 6
    assert all((tmp_path / "out" / r.arrays).is_file() for r in merged.runs)
    again = json.loads((tmp_path / "out" / "results.partial.json").read_text())
    assert len(again["runs"]) == 6
