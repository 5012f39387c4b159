"""Every bundled model loads, verifies, and `lrbnn evaluate` reproduces the metrics its manifest records.

What the reproduction test guarantees, on any machine that installs the project (torch pinned by the
Makefile; numpy, scikit-learn and the BLAS build are whatever pip resolves):

* every recorded metric is reproduced within ``1e-4 * max(1, |value|)``; a metric that counts examples
  (accuracy, coverage, flag and false-positive rates) also within one example of its split (1/n);
* in one process, the same evaluation twice gives bitwise the same report (the only place the answer
  is really bitwise: float32 reductions differ between BLAS kernels and library builds, which moved a
  sentiment metric by 8.5e-7 between two machines of the same kind);
* the tolerance is tight enough to fail: another noise seed moves at least one metric beyond it.

Why not pin numpy/scikit-learn/BLAS instead: a user's machine resolves its own builds, and the check is
about this repository's code and weights, not about one machine's rounding. A model too slow to evaluate
whole in CI (the sentiment Transformer takes over 3 minutes on two cores) records ``training.check``: the
metrics of ``lrbnn evaluate --rows N`` (N evenly spaced rows of each evaluated split, recorded by
``deploy/bundle.py --check-rows N``), which the test reproduces with the same tolerance; the full-set
metrics stay in ``training.metrics`` and ``lrbnn evaluate`` without ``--rows`` reproduces them.
"""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from model_core.checkpoint import load_checkpoint
from model_core.cli.main import main

REPO = Path(__file__).resolve().parents[2] / "deploy" / "models"
BUNDLED = sorted(p for p in REPO.glob("*/*") if (p / "manifest.json").is_file())
IDS = [f"{p.parent.name}-{p.name}" for p in BUNDLED]

RELATIVE = 1e-4
#: fractions of a split's examples: one example across a threshold moves them by 1/n
COUNTING = {"accuracy", "picp", "picp_raw", "flag_rate_in", "flag_rate_out", "fpr_at_95_tpr"}
#: the report sections compared, and the split each one's counting metrics count
SECTIONS = {"test": "test", "ood": "ood", "ood_near": "ood_near"}


def tolerance(key: str, value: float, n: int) -> float:
    tol = RELATIVE * max(1.0, abs(value))
    if key in COUNTING:
        tol = max(tol, 1.0 / n + 1e-12)
    return tol


def differences(recorded: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """Every recorded finite metric outside its tolerance (empty: reproduced)."""
    sizes = report["split_sizes"]
    out = []
    for section, split in SECTIONS.items():
        for key, value in recorded.get(section, {}).items():
            if not (isinstance(value, float) and math.isfinite(value)):
                continue
            got = report[section][key]
            n = min(sizes["test"], sizes[split])
            if abs(got - value) > tolerance(key, value, n):
                out.append(
                    f"{section}.{key}: obtained {got!r}, recorded {value!r} ± {tolerance(key, value, n):.2g}"
                )
    return out


def test_the_icu_model_is_bundled() -> None:
    assert (REPO / "icu-mortality" / "1" / "manifest.json").is_file()


@pytest.mark.parametrize("path", BUNDLED, ids=IDS)
def test_bundled_model_verifies_and_was_trained_by_this_repository(path: Path) -> None:
    ckpt = load_checkpoint(path)
    assert ckpt.manifest.model_name == path.parent.name and ckpt.manifest.model_version == path.name
    command = ckpt.manifest.training["command"]
    assert command.startswith(("lrbnn train ", "lrbnn reproduce ")), command
    check = ckpt.manifest.training.get("check")
    if check is not None:  # a recorded quick check names how it was made
        assert check["rows"] > 0 and set(check["metrics"]) >= {"test"}, check


def test_the_comparison_reports_what_is_out_of_tolerance() -> None:
    sizes = {"test": 1000, "ood": 500, "ood_near": 100}
    recorded = {"test": {"nll": 0.5, "accuracy": 0.8}, "ood": {"flag_rate_out": 0.05}}
    near = {
        "test": {"nll": 0.5 + 4e-5, "accuracy": 0.801},
        "ood": {"flag_rate_out": 0.052},
        "split_sizes": sizes,
    }
    assert differences(recorded, near) == []  # within 1e-4, and one example of 1,000 / 500
    far = {"test": {"nll": 0.5002, "accuracy": 0.8021}, "ood": {"flag_rate_out": 0.05}, "split_sizes": sizes}
    assert [d.split(":")[0] for d in differences(recorded, far)] == ["test.nll", "test.accuracy"]
    assert tolerance("mae", 10.9, 6260) == pytest.approx(1.09e-3)


def _evaluate(path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main(["evaluate", str(path), "--data-dir", str(data_dir), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("path", BUNDLED, ids=IDS)
def test_evaluate_reproduces_the_recorded_metrics(
    path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest's ``training.check`` (N rows) where it records one, else the full ``training.metrics``."""
    training = json.loads((path / "manifest.json").read_text())["training"]
    check = training.get("check")
    if check is None:
        report = _evaluate(path, data_dir, capsys)
        recorded = training["metrics"]
    else:
        extra = [
            "--rows",
            str(check["rows"]),
            "--seed",
            str(check["seed"]),
            "--samples",
            str(check["samples"]),
        ]
        report = _evaluate(path, data_dir, capsys, *extra)
        recorded = check["metrics"]
        assert report["split_sizes"]["test"] == min(check["rows"], training["split_sizes"]["test"])
    assert not differences(recorded, report), "\n".join(differences(recorded, report))


@pytest.mark.realdata
@pytest.mark.slow
def test_evaluation_is_bitwise_in_one_process_and_the_tolerance_can_fail(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = REPO / "icu-mortality" / "1"
    first = _evaluate(path, data_dir, capsys, "--rows", "400")
    assert _evaluate(path, data_dir, capsys, "--rows", "400") == first
    other_seed = _evaluate(path, data_dir, capsys, "--rows", "400", "--seed", "1")
    assert differences({k: first[k] for k in ("test", "ood")}, other_seed), "a new seed changed nothing"
