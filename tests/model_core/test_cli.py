import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_core.cli.main import main


def test_train_and_evaluate_on_a_generated_csv(
    toy_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    code = main(
        [
            "train",
            "--task",
            "csv",
            "--csv",
            str(toy_csv),
            "--target",
            "label",
            "--method",
            "lowrank",
            "--rank",
            "2",
            "--hidden",
            "8",
            "8",
            "--epochs",
            "3",
            "--samples",
            "16",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["parameter_count"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["task"] == "csv" and "lrbnn train" in manifest["training"]["command"]
    assert main(["evaluate", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("auroc", "nll", "ece", "brier", "aupr_err"):
        assert 0.0 <= report["test"][key] <= 10.0
    assert report["parameter_count"] == trained["parameter_count"]
    # the Monte Carlo error at a small S: replicate 0 is the seed's evaluation, the others move the metrics
    assert main(["evaluate", str(out), "--json", "--samples", "4"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(out), "--json", "--samples", "4", "--mc-replicates", "3"]) == 0
    replicated = json.loads(capsys.readouterr().out)
    assert replicated["test"] == single["test"] and replicated["mc_error"]["replicates"] == 3
    assert 0.0 < replicated["mc_error"]["test"]["nll"] < 1.0
    assert main(["evaluate", str(out), "--mc-replicates", "0"]) != 0


def test_monte_carlo_error_is_the_spread_over_replicates() -> None:
    from model_core.evaluation import monte_carlo_error

    reports = [
        {"test": {"nll": 0.5, "auroc": 0.7}, "samples": 32, "method": "lowrank"},
        {"test": {"nll": 0.7, "auroc": 0.7}, "samples": 32, "method": "lowrank"},
        {"test": {"nll": 0.6, "auroc": 0.7}, "samples": 32, "method": "lowrank"},
    ]
    error = monte_carlo_error(reports)
    assert error == {"test": {"nll": pytest.approx(0.1), "auroc": 0.0}}
    with pytest.raises(ValueError, match="two replicates"):
        monte_carlo_error(reports[:1])


def test_evaluate_refuses_a_tampered_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").write_text('{"format_version": 99}')
    assert main(["evaluate", str(tmp_path), "--json"]) == 2
    assert "format_version 99" in capsys.readouterr().err


def test_help_lists_every_contract_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-m", "model_core.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    for cmd in ("train", "evaluate", "export-onnx", "serve", "bench", "reproduce"):
        assert cmd in out


@pytest.mark.realdata
@pytest.mark.slow
def test_icu_train_and_evaluate_on_real_support2(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "icu"
    assert (
        main(
            [
                "train",
                "--task",
                "icu",
                "--method",
                "lowrank",
                "--rank",
                "15",
                "--epochs",
                "2",
                "--samples",
                "16",
                "--data-dir",
                str(data_dir),
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data-dir", str(data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "support2"
    assert 0.6 < report["test"]["auroc"] <= 1.0  # two epochs already learn a useful risk score
    assert 0.0 <= report["ood"]["ood_auroc"] <= 1.0
    assert report["split_sizes"]["ood"] > 0


def test_serve_names_a_bad_setting_without_a_traceback(monkeypatch, capsys) -> None:
    pytest.importorskip("fastapi")
    monkeypatch.setenv("LRBNN_MAX_QUEUE", "0")
    monkeypatch.setenv("LRBNN_WORKERS", "many")
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "LRBNN_MAX_QUEUE: Input should be greater than or equal to 1 (got '0')" in err
    assert "LRBNN_WORKERS:" in err and "'many'" in err and "Traceback" not in err
