"""The Beijing PM2.5 loader (``--task air``) on small files in the UCI format, plus the real file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from model_core.cli.main import main
from model_core.data import TASK_LOADERS
from model_core.data.air import (
    AIR_FAULTS,
    AIR_RELATIVE_PATH,
    AIR_WINDOW,
    SequenceSplits,
    build_windows,
    load_air,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids thread-pool waits on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DIRECTIONS = ("NE", "NW", "SE", "cv")
HEADER = "No,year,month,day,hour,pm2.5,DEWP,TEMP,PRES,cbwd,Iws,Is,Ir"


def write_uci_csv(root: Path, hours: int = 400, missing: tuple[int, ...] = (100, 101, 250)) -> Path:
    """A UCI-format file: pm2.5 = row index (NA for the first 24 hours and at ``missing``)."""
    path = root / AIR_RELATIVE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    start = np.datetime64("2010-01-01T00")
    lines = [HEADER]
    for i in range(hours):
        stamp = (start + np.timedelta64(i, "h")).astype(object)
        pm = "NA" if i < 24 or i in missing else str(i)
        lines.append(
            f"{i + 1},{stamp.year},{stamp.month},{stamp.day},{stamp.hour},{pm},{-20 + i % 7},"
            f"{i % 30 - 5}.0,{1000 + i % 20}.0,{DIRECTIONS[i % 4]},{1.79 + (i % 5)},{i % 2},0"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def air_dir(tmp_path: Path) -> Path:
    write_uci_csv(tmp_path)
    return tmp_path


def _unscale(splits: SequenceSplits, x: np.ndarray, name: str) -> np.ndarray:
    spec = splits.preprocessor.spec(name)
    assert spec.min is not None and spec.max is not None
    col = splits.preprocessor.output_names.index(name)
    return x[..., col].astype(np.float64) * (spec.max - spec.min) + spec.min


def test_windows_split_chronologically_without_target_leakage(air_dir: Path) -> None:
    splits = load_air(air_dir)
    assert TASK_LOADERS["air"] is load_air
    # targets: observed rows t with t - 24 >= 24 (first reading); rows 100, 101, 250 are missing
    expected = [t for t in range(48, 400) if t not in (100, 101, 250)]
    rows = np.concatenate([splits.source_rows[k] for k in ("train", "val", "test")])
    assert rows.tolist() == expected
    n = len(expected)
    assert splits.sizes["train"] == round(0.7 * n) and splits.sizes["val"] == round(0.15 * n)
    assert splits.sizes["ood"] == splits.sizes["test"]
    tr, va, te = (splits.source_rows[k] for k in ("train", "val", "test"))
    assert tr.max() < va.min() and va.max() < te.min()  # chronological
    for split in ("train", "val", "test"):
        x, y, t = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}"), splits.source_rows[split]
        assert x.shape == (len(t), AIR_WINDOW, 15) and x.dtype == np.float32
        np.testing.assert_array_equal(y, t.astype(np.float32))  # pm2.5 = row index
        pm = _unscale(splits, x, "pm2.5")  # the window holds hours t-24 .. t-1 (forward-filled)
        hours = t[:, None] + np.arange(-AIR_WINDOW, 0)
        filled = np.where(np.isin(hours, (100, 101, 250)), np.where(hours == 250, 249, 99), hours)
        np.testing.assert_allclose(pm, filled, atol=1e-3)
        assert (pm < t[:, None] - 0.5).all()  # the target hour is never inside its window


def test_forward_fill_and_one_hot(air_dir: Path) -> None:
    splits = load_air(air_dir)
    t = splits.source_rows["train"]
    i = int(np.flatnonzero(t == 110)[0])  # window 86..109 contains the gap at 100, 101
    pm = _unscale(splits, splits.x_train[i], "pm2.5")
    assert pm[100 - 86] == pytest.approx(99, abs=1e-3) and pm[101 - 86] == pytest.approx(99, abs=1e-3)
    names = splits.preprocessor.output_names
    assert names[7:11] == [f"cbwd={d}" for d in DIRECTIONS]
    onehot = splits.x_train[..., 7:11]
    assert (onehot.sum(-1) == 1).all()
    hours = t[:, None] + np.arange(-AIR_WINDOW, 0)
    np.testing.assert_array_equal(onehot.argmax(-1), hours % 4)
    assert names[11:] == ["hour_sin", "hour_cos", "month_sin", "month_cos"]


def test_build_windows_rules() -> None:
    pm = np.array([np.nan, np.nan, 5.0, np.nan, 7.0, 8.0, np.nan, 9.0])
    targets, filled = build_windows(pm, window=2)
    assert targets.tolist() == [4, 5, 7]  # observed and t - 2 >= 2 (first reading)
    np.testing.assert_array_equal(filled[2:], [5, 5, 7, 8, 8, 9])


def test_scaling_is_fitted_on_training_hours_only(air_dir: Path) -> None:
    splits = load_air(air_dir)
    spec = splits.preprocessor.spec("pm2.5")
    assert spec.max == pytest.approx(float(splits.source_rows["train"].max()))  # pm2.5 = row index
    assert splits.x_test[..., 0].max() > 1.0  # later hours extrapolate beyond the training range


def test_shift_set_has_realistic_sensor_faults(air_dir: Path) -> None:
    splits = load_air(air_dir)
    np.testing.assert_array_equal(splits.y_ood, splits.y_test)
    assert splits.fault_names == list(AIR_FAULTS)
    counts = np.bincount(splits.ood_fault, minlength=3)
    assert counts.sum() == len(splits.y_ood) and counts.max() - counts.min() <= 1
    col = {name: splits.preprocessor.output_names.index(name) for name in ("pm2.5", "TEMP", "PRES")}
    for k, fault in enumerate(AIR_FAULTS):
        sel = splits.ood_fault == k
        ood, test = splits.x_ood[sel], splits.x_test[sel]
        changed = {name: not np.allclose(ood[..., c], test[..., c]) for name, c in col.items()}
        if fault == "stuck_pm25":
            assert np.ptp(ood[..., col["pm2.5"]], axis=1).max() == 0.0
            assert changed == {"pm2.5": True, "TEMP": False, "PRES": False}
        elif fault == "temp_fahrenheit":
            np.testing.assert_allclose(
                _unscale(splits, ood, "TEMP"), 1.8 * _unscale(splits, test, "TEMP") + 32, atol=1e-3
            )
            assert changed == {"pm2.5": False, "TEMP": True, "PRES": False}
        else:
            assert changed == {"pm2.5": False, "TEMP": False, "PRES": True}


def test_input_schema_is_a_sequence_window(air_dir: Path) -> None:
    schema = load_air(air_dir).input_schema()
    assert schema["kind"] == "sequence" and schema["window"] == 24 and schema["horizon"] == 1
    assert len(schema["step_inputs"]) == 15 and schema["target"] == "pm2.5"
    json.dumps(schema)


def test_rejects_a_file_that_is_not_uci_format(tmp_path: Path) -> None:
    path = tmp_path / AIR_RELATIVE_PATH
    path.parent.mkdir(parents=True)
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="UCI format"):
        load_air(tmp_path)
    with pytest.raises(FileNotFoundError, match="LRBNN_DATA_DIR"):
        load_air(tmp_path / "nowhere")


def test_cli_train_and_evaluate_air(
    air_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    args = ["--rank", "2", "--hidden", "8", "8", "--epochs", "2", "--samples", "8", "--no-progress"]
    code = main(
        [
            "train",
            "--task",
            "air",
            "--method",
            "lowrank",
            *args,
            "--data-dir",
            str(air_dir),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"]["kind"] == "lstm" and manifest["architecture"]["hidden"] == [8, 8]
    assert manifest["input_schema"]["kind"] == "sequence" and manifest["input_schema"]["window"] == 24
    assert manifest["calibration"]["ood_score"] == "predictive_std"
    assert len(manifest["architecture"]["extra"]["input_scale"]) == 15
    assert main(["evaluate", str(out), "--json", "--data-dir", str(air_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("mae", "rmse", "nll", "picp", "mpiw", "crps"):
        assert np.isfinite(report["test"][key])
    assert 0.0 <= report["ood"]["ood_auroc"] <= 1.0
    assert {f"auroc_{f}" for f in AIR_FAULTS} <= set(report["ood"])
    assert report["ood"] == pytest.approx(manifest["training"]["metrics"]["ood"])


@pytest.mark.realdata
@pytest.mark.slow
def test_real_file_gives_the_paper_split_sizes(data_dir: Path) -> None:
    if not (data_dir / AIR_RELATIVE_PATH).is_file():
        pytest.skip("beijing_pm25 is not in LRBNN_DATA_DIR")
    splits = load_air(data_dir)
    assert splits.sizes == {"train": 29213, "val": 6260, "test": 6260, "ood": 6260}
    assert splits.x_train.shape[1:] == (24, 15)
    assert np.isfinite(splits.x_train).all() and np.isfinite(splits.x_ood).all()
    assert splits.source_rows["train"].max() < splits.source_rows["val"].min()
