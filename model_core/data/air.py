"""Beijing PM2.5 forecasting (``--task air``): 24-hour windows of 15 hourly features -> next-hour PM2.5.

Data: the UCI "Beijing PM2.5" file (data set 381, Liang et al. 2015), hourly readings at the US embassy
from 2010-01-01 to 2014-12-31, columns ``No,year,month,day,hour,pm2.5,DEWP,TEMP,PRES,cbwd,Iws,Is,Ir``,
``NA`` marking 2,067 missing ``pm2.5`` values. The file is read from
``<data_dir>/beijing_pm25/PRSA_data_2010.1.1-2014.12.31.csv``.

Per hour, 15 model inputs (12 raw features, ``cbwd`` one-hot over its 4 directions):

* 7 numeric measurements: ``pm2.5`` (µg/m³), ``DEWP`` (°C), ``TEMP`` (°C), ``PRES`` (hPa), ``Iws``
  (cumulated wind speed, m/s), ``Is`` and ``Ir`` (cumulated hours of snow / rain);
* ``cbwd`` one-hot: NE, NW, SE, cv (calm/variable) -> 4 columns;
* 4 time features: ``hour_sin``/``hour_cos`` (hour of day on the 24-hour circle) and ``month_sin`` /
  ``month_cos`` (month on the 12-month circle). The paper's 15 features are most likely the raw
  ``year, month, day, hour`` columns (7 + 4 + 4 = 15 as well); we replace them by cyclic encodings
  because under a chronological split ``year`` takes a value in the test period never seen in training
  (pure extrapolation), ``day`` of month carries no physical signal, and raw ``hour``/``month`` put
  23:00 and 00:00 (December and January) at opposite ends of the scale.

Windows: the target is PM2.5 at hour t; the inputs are hours t-24 .. t-1 (the target hour is never
inside its window, so nothing leaks). Missing ``pm2.5`` inputs inside a window are forward-filled with
the last earlier reading (only the past is used). Gaps run up to 155 hours, so 4,137 of the windows
hold at least one filled hour and 22 see a completely flat, stale PM2.5 trace. A window is kept when
(a) its target is observed and (b) every input hour lies at or after the first observed PM2.5 reading,
so forward fill is defined for every input (the file starts with 24 hours of missing PM2.5). That
leaves 41,733 windows; the split is chronological, 70/15/15
by window order: 29,213 train / 6,260 validation / 6,260 test -- exactly the paper's counts.
(The paper apparently dropped the missing rows and slid windows over the remaining rows, which gives the
same count; our windows are true consecutive 24-hour windows instead.)

Preprocessing is the project's tabular :class:`Preprocessor`, applied per hour and fitted on the hours
up to the last training target only: median imputation (never needed after forward fill, except in a
served request), clipping at Q1/Q3 -/+ 8*IQR and MinMax scaling of every numeric column, one-hot for
``cbwd``. The target stays in µg/m³; the model standardises it with the training mean and std.

Shift set (OOD): the Guangzhou data the paper used is not available, so the OOD set is the test windows
with realistic sensor faults, one per window (assigned by a fixed seed, independent of ``seed``):

* ``stuck_pm25``: the PM2.5 monitor froze -- the window's first reading is repeated for all 24 hours;
* ``temp_fahrenheit``: the thermometer reports °F instead of °C (unit error, T_F = 1.8 T + 32);
* ``pres_mmhg``: the barometer reports mmHg instead of hPa (unit error, ×0.750062).

The targets are the true next-hour readings. See ``docs/air.md`` for the justification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_core.data.dataset import SPLIT_FRACTIONS, TabularSplits
from model_core.data.preprocessing import Preprocessor

__all__ = [
    "AIR_FAULTS",
    "AIR_FEATURES",
    "AIR_RELATIVE_PATH",
    "AIR_TARGET",
    "AIR_WINDOW",
    "SequenceSplits",
    "build_windows",
    "load_air",
]

AIR_RELATIVE_PATH = Path("beijing_pm25") / "PRSA_data_2010.1.1-2014.12.31.csv"
AIR_TARGET = "pm2.5"
AIR_WINDOW = 24
#: Raw per-hour features, in model order (``cbwd`` expands to 4 one-hot columns).
AIR_FEATURES: list[str] = [
    "pm2.5",
    "DEWP",
    "TEMP",
    "PRES",
    "Iws",
    "Is",
    "Ir",
    "cbwd",
    "hour_sin",
    "hour_cos",
    "month_sin",
    "month_cos",
]
AIR_CATEGORICAL = frozenset({"cbwd"})
AIR_UNITS: dict[str, str] = {
    "pm2.5": "µg/m³",
    "DEWP": "°C",
    "TEMP": "°C",
    "PRES": "hPa",
    "Iws": "m/s (cumulated)",
    "Is": "hours (cumulated)",
    "Ir": "hours (cumulated)",
}
#: Sensor faults of the shift set, in code order (``SequenceSplits.ood_fault`` holds these codes).
AIR_FAULTS: tuple[str, ...] = ("stuck_pm25", "temp_fahrenheit", "pres_mmhg")
#: Fixed seed of the fault assignment, so OOD numbers across split seeds differ only through the model.
AIR_FAULT_SEED = 2014
_MEASUREMENTS = ("DEWP", "TEMP", "PRES", "Iws", "Is", "Ir")
_RAW_COLUMNS = ["year", "month", "day", "hour", "pm2.5", "DEWP", "TEMP", "PRES", "cbwd", "Iws", "Is", "Ir"]


@dataclass
class SequenceSplits(TabularSplits):
    """:class:`TabularSplits` whose inputs are windows: ``x_*`` are float32 ``(n, window, width)``.

    ``preprocessor`` is the per-time-step preprocessing (width = ``preprocessor.n_outputs``);
    ``source_rows`` maps each split to the 0-based file row of each window's target hour (the window is
    the ``window`` rows before it). ``ood_fault`` holds, per OOD window, its index into ``fault_names``.
    """

    window: int = AIR_WINDOW
    horizon: int = 1
    fault_names: list[str] = field(default_factory=list)
    ood_fault: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    schema_extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        width = self.preprocessor.n_outputs
        shape = f"(n, {self.window}, {width})"
        for split in ("train", "val", "test", "ood"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if x.ndim != 3 or x.shape[1:] != (self.window, width) or x.dtype != np.float32:
                raise ValueError(f"x_{split} must be float32 {shape}, got {x.dtype} {x.shape}")
            if y.shape != (x.shape[0],) or y.dtype != np.float32:
                raise ValueError(f"y_{split} must be float32 ({x.shape[0]},), got {y.dtype} {y.shape}")
        if self.task != "regression":
            raise ValueError("sequence splits are regression only")
        if len(self.ood_fault) not in (0, len(self.y_ood)):
            raise ValueError("ood_fault needs one code per OOD window")

    def input_schema(self) -> dict[str, Any]:
        """The manifest's ``input_schema``: kind ``sequence``, the window spec and the per-step scaling."""
        return {
            "kind": "sequence",
            "preprocessing": self.preprocessor.to_dict(),
            "window": self.window,
            "horizon": self.horizon,
            "step_features": self.preprocessor.feature_names,
            "step_inputs": self.preprocessor.output_names,
            **self.schema_extra,
        }


def _time_features(hour: np.ndarray, month: np.ndarray) -> dict[str, np.ndarray]:
    h = 2.0 * np.pi * hour.astype(np.float64) / 24.0
    m = 2.0 * np.pi * (month.astype(np.float64) - 1.0) / 12.0
    return {"hour_sin": np.sin(h), "hour_cos": np.cos(h), "month_sin": np.sin(m), "month_cos": np.cos(m)}


def build_windows(pm25: np.ndarray, window: int = AIR_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Target rows of the usable windows and the forward-filled PM2.5 series.

    A target row t is kept when pm2.5[t] is observed and t - window >= the first observed row (so forward
    fill defines every input). Returns ``(targets, filled)``; ``filled`` is NaN before the first reading.
    """
    pm25 = np.asarray(pm25, dtype=np.float64)
    observed = ~np.isnan(pm25)
    if not observed.any():
        raise ValueError("no observed pm2.5 value")
    first = int(np.flatnonzero(observed)[0])
    # forward fill: index of the last observed row at or before each row
    last = np.where(observed, np.arange(len(pm25)), -1)
    np.maximum.accumulate(last, out=last)
    filled = np.where(last >= 0, pm25[np.maximum(last, 0)], np.nan)
    rows = np.arange(len(pm25))
    targets = rows[observed & (rows - window >= first)]
    return targets.astype(np.int64), filled


def _chronological(n: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> tuple[int, int]:
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return n_train, n_val


def _apply_faults(columns: dict[str, np.ndarray], fault: np.ndarray) -> dict[str, np.ndarray]:
    """Sensor faults on (n, window) raw columns; ``fault`` holds one code per window (AIR_FAULTS order)."""
    out = {k: v.copy() for k, v in columns.items()}
    stuck = fault == AIR_FAULTS.index("stuck_pm25")
    out["pm2.5"][stuck] = out["pm2.5"][stuck][:, :1]
    fahrenheit = fault == AIR_FAULTS.index("temp_fahrenheit")
    out["TEMP"][fahrenheit] = 1.8 * out["TEMP"][fahrenheit] + 32.0
    mmhg = fault == AIR_FAULTS.index("pres_mmhg")
    out["PRES"][mmhg] = 0.750062 * out["PRES"][mmhg]
    return out


def _transform_windows(pre: Preprocessor, columns: dict[str, np.ndarray]) -> np.ndarray:
    """Windows of raw columns -> unclipped scaled windows (``pre.clip`` of them: the network input)."""
    n, w = columns["pm2.5"].shape
    flat = {k: v.reshape(-1) for k, v in columns.items()}
    return pre.transform_frame(flat, clip=False).reshape(n, w, pre.n_outputs)


def load_air(data_dir: str | os.PathLike[str], seed: int = 0) -> SequenceSplits:
    """Load the Beijing PM2.5 forecasting task (see the module docstring).

    The split is chronological, so ``seed`` changes nothing in the data (it is accepted for the loader
    protocol and recorded); the fault assignment of the shift set uses a fixed seed.
    """
    import pandas as pd

    path = Path(data_dir) / AIR_RELATIVE_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"Beijing PM2.5 not found at {path}; point --data-dir / $LRBNN_DATA_DIR at the folder "
            f"containing {AIR_RELATIVE_PATH}"
        )
    frame = pd.read_csv(path, na_values=["NA"], keep_default_na=True)
    absent = sorted(set(_RAW_COLUMNS) - set(frame.columns))
    if absent:
        raise ValueError(f"{path}: not in the UCI format, missing columns {absent}")
    stamps = frame[["year", "month", "day", "hour"]].to_numpy(dtype=np.int64)
    order = np.lexsort(stamps.T[::-1])
    if not np.array_equal(order, np.arange(len(frame))):
        raise ValueError(f"{path}: rows are not in chronological order")

    raw_pm = frame[AIR_TARGET].to_numpy(dtype=np.float64)
    targets, filled = build_windows(raw_pm, AIR_WINDOW)
    if len(targets) < 10:
        raise ValueError(f"{path}: only {len(targets)} usable windows")
    columns: dict[str, np.ndarray] = {
        "pm2.5": filled,
        **{name: frame[name].to_numpy(dtype=np.float64) for name in _MEASUREMENTS},
        "cbwd": frame["cbwd"].astype(object).where(frame["cbwd"].notna(), None).to_numpy(dtype=object),
        **_time_features(frame["hour"].to_numpy(), frame["month"].to_numpy()),
    }
    n_train, n_val = _chronological(len(targets))
    parts = {
        "train": targets[:n_train],
        "val": targets[n_train : n_train + n_val],
        "test": targets[n_train + n_val :],
    }
    # Fit on the hours up to the last training target: every training input and target, nothing later.
    fit_rows = slice(0, int(parts["train"][-1]) + 1)
    pre = Preprocessor.fit(
        {k: v[fit_rows] for k, v in columns.items()}, AIR_FEATURES, AIR_CATEGORICAL, AIR_UNITS
    )
    hourly = pre.transform_frame(columns, clip=False)  # (hours, 15), unclipped
    offsets = np.arange(-AIR_WINDOW, 0)
    arrays: dict[str, Any] = {}
    unclipped: dict[str, np.ndarray] = {}
    for split, rows in parts.items():
        unclipped[split] = hourly[rows[:, None] + offsets]
        arrays[f"x_{split}"] = pre.clip(unclipped[split])
        arrays[f"y_{split}"] = raw_pm[rows].astype(np.float32)

    test_rows = parts["test"]
    rng = np.random.default_rng(AIR_FAULT_SEED)
    fault = rng.permutation(np.arange(len(test_rows)) % len(AIR_FAULTS)).astype(np.int64)
    window_cols = {k: v[test_rows[:, None] + offsets] for k, v in columns.items()}
    unclipped["ood"] = _transform_windows(pre, _apply_faults(window_cols, fault))
    arrays["x_ood"] = pre.clip(unclipped["ood"])
    arrays["y_ood"] = arrays["y_test"].copy()

    sizes = {k: len(v) for k, v in parts.items()}
    first_target = {k: _stamp(stamps[v[0]]) for k, v in parts.items()}
    description = (
        f"Beijing PM2.5 (UCI 381, {len(frame)} hours, {int(np.isnan(raw_pm).sum())} missing pm2.5): predict "
        f"next-hour pm2.5 from {AIR_WINDOW}-hour windows of {pre.n_outputs} inputs per hour "
        f"({', '.join(pre.output_names)}). Missing pm2.5 inputs are forward-filled; windows with a "
        f"missing target or starting before the first reading are dropped ({len(targets)} windows). "
        f"Chronological 70/15/15 split: train {sizes['train']} (from {first_target['train']}), val "
        f"{sizes['val']} (from {first_target['val']}), test {sizes['test']} (from {first_target['test']}). "
        "Clipping (8*IQR) and MinMax scaling fitted on the training hours only. OOD = the test windows "
        f"with one sensor fault each ({', '.join(AIR_FAULTS)}; fixed seed {AIR_FAULT_SEED})."
    )
    schema_extra = {
        "target": AIR_TARGET,
        "target_unit": AIR_UNITS[AIR_TARGET],
        "derived_features": {
            "hour_sin": "sin(2*pi*hour/24)",
            "hour_cos": "cos(2*pi*hour/24)",
            "month_sin": "sin(2*pi*(month-1)/12)",
            "month_cos": "cos(2*pi*(month-1)/12)",
        },
        "missing_policy": "pm2.5 forward-filled from the last earlier reading; others median-imputed",
        "order": "oldest hour first; the target is the hour after the last one",
    }
    return SequenceSplits(
        **arrays,
        preprocessor=pre,
        feature_names=list(AIR_FEATURES),
        task="regression",
        target_name=AIR_TARGET,
        description=description,
        dataset="beijing_pm25",
        source_rows={**parts, "ood": test_rows.copy()},
        window=AIR_WINDOW,
        fault_names=list(AIR_FAULTS),
        ood_fault=fault,
        schema_extra=schema_extra,
        unclipped=unclipped,
    )


def _stamp(row: np.ndarray) -> str:
    y, m, d, h = (int(v) for v in row)
    return f"{y:04d}-{m:02d}-{d:02d} {h:02d}:00"
