"""``lrbnn reproduce --quick``: the whole experiment path on the real ICU data, tiny budgets."""

import json
import math
from pathlib import Path

import pytest

from model_core.cli.main import main
from model_core.models.spec import Method
from model_core.reproduce.config import TASKS
from model_core.reproduce.paper import paper_value
from model_core.reproduce.runner import sweep_ranks


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
    results = json.loads((out / "results.json").read_text())
    icu = results["tasks"]["icu"]
    methods = {r["method"] for r in icu["runs"]}
    assert methods == {m.value for m in Method}
    for run in icu["runs"]:
        for dotted in TASKS["icu"].metrics:
            section, key = dotted.split(".")
            value = run["metrics"][section][key]
            if run["method"] == "deterministic" and key == "score_ratio":
                assert math.isnan(value)  # MI is exactly 0 in and out: the ratio 0/0 is undefined
                continue
            assert math.isfinite(value), (run["method"], dotted)
        assert run["params"] > 0
    assert len(icu["summary"]) == len(Method)
    assert [r["rank"] for r in icu["rank_sweep"]] == list(TASKS["icu"].rank_sweep[:2])
    assert icu["spectrum"] and all(0.0 <= row["tail_fraction"] <= 1.0 for row in icu["spectrum"])
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header = table[0].split("|")
    rows = [line for line in table if line.split("|")[1].strip() in methods]
    assert len(rows) == len(Method)
    assert all(len(r.split("|")) == len(header) for r in rows)  # every row has every column
    assert "paper ood_auroc" in md
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
                {"test": {"auroc": auroc}, "ood": {"score_ratio": float("nan")}},
            )
        )
    _checkpoint_results(results, out)
    assert main(["reproduce", "--task", "icu", "--report-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| lowrank |"))
    assert "0.720 ± 0.028" in row  # mean and sample std of 0.70 and 0.74
    assert "nan" not in row
