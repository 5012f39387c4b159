"""Every bundled model loads, verifies, and `lrbnn evaluate` reproduces the metrics its manifest records."""

import json
import math
from pathlib import Path

import pytest

from model_core.checkpoint import load_checkpoint
from model_core.cli.main import main

REPO = Path(__file__).resolve().parents[2] / "deploy" / "models"
BUNDLED = sorted(p for p in REPO.glob("*/*") if (p / "manifest.json").is_file())


def test_the_icu_model_is_bundled() -> None:
    assert (REPO / "icu-mortality" / "1" / "manifest.json").is_file()


@pytest.mark.parametrize("path", BUNDLED, ids=[f"{p.parent.name}-{p.name}" for p in BUNDLED])
def test_bundled_model_verifies_and_was_trained_by_this_repository(path: Path) -> None:
    ckpt = load_checkpoint(path)
    assert ckpt.manifest.model_name == path.parent.name and ckpt.manifest.model_version == path.name
    command = ckpt.manifest.training["command"]
    assert command.startswith(("lrbnn train ", "lrbnn reproduce ")), command


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("path", BUNDLED, ids=[f"{p.parent.name}-{p.name}" for p in BUNDLED])
def test_evaluate_reproduces_the_recorded_metrics(
    path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = json.loads((path / "manifest.json").read_text())["training"]["metrics"]
    assert main(["evaluate", str(path), "--data-dir", str(data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for section in ("test", "ood"):
        for key, value in recorded[section].items():
            if isinstance(value, float) and math.isfinite(value):
                assert report[section][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (section, key)
