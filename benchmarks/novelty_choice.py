"""Choose the ICU novelty detector's feature map by validation data only (issue #14).

    .venv/bin/python benchmarks/novelty_choice.py --data-dir ../shared/data [--json out.json]

Each candidate is a Ledoit-Wolf Mahalanobis distance (fitted on the training split's unclipped scaled
inputs) on a different feature map. Selection: the mean AUROC over the unit-error sets constructed on
the *validation* patients (``model_core.data.icu.unit_error_frames``) against the unchanged validation
patients. The test-split rows (Coma, test unit errors, the false-alarm rate at the validation 95th
percentile) are printed for the record and were not used to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def quantile_normal(train: np.ndarray, knots: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """Per column, the normal quantile of the training CDF, extended linearly beyond the training range."""
    from scipy.stats import norm

    levels = np.linspace(0.0, 1.0, knots)
    q = np.quantile(train, levels, axis=0)
    eps = 0.5 / len(train)

    def f(z: np.ndarray) -> np.ndarray:
        out = np.zeros(z.shape, dtype=np.float64)
        for j in range(z.shape[1]):
            col, qq = z[:, j].astype(np.float64), q[:, j]
            span = qq[-1] - qq[0]
            if span <= 0:
                continue
            knots_j, first = np.unique(qq, return_index=True)
            out[:, j] = norm.ppf(np.clip(np.interp(col, knots_j, levels[first]), eps, 1 - eps))
            out[:, j] += 10 * (np.clip((col - qq[-1]) / span, 0, 1e6) - np.clip((qq[0] - col) / span, 0, 1e6))
        return out

    return f


def main() -> int:
    import pandas as pd
    from sklearn.covariance import LedoitWolf

    from model_core.data.icu import ICU_FEATURES, ICU_RELATIVE_PATH, ICU_TARGET, load_icu, unit_error_frames

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)

    splits = load_icu(args.data_dir, seed=args.seed)
    pre = splits.preprocessor
    frame = pd.read_csv(Path(args.data_dir) / ICU_RELATIVE_PATH)
    frame = frame[frame[ICU_TARGET].notna()]
    val_frame = frame.loc[splits.source_rows["val"], list(ICU_FEATURES)]
    val_shifts = {k: pre.transform_frame(v, clip=False) for k, v in unit_error_frames(val_frame).items()}
    train, val, test = (splits.novelty_input(s) for s in ("train", "val", "test"))
    qn = quantile_normal(train)
    maps: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "scaled inputs (kept)": lambda z: np.clip(z, -1e6, 1e6).astype(np.float64),
        "quantile-normal": qn,
        "both": lambda z: np.concatenate([np.clip(z, -1e6, 1e6), qn(z)], axis=1),
    }
    rows: dict[str, dict[str, float]] = {}
    for name, fmap in maps.items():
        lw = LedoitWolf().fit(fmap(train))

        def score(z: np.ndarray, lw: LedoitWolf = lw, fmap: Callable = fmap) -> np.ndarray:
            return np.sqrt(lw.mahalanobis(fmap(z)))

        s_val, s_test = score(val), score(test)
        threshold = float(np.quantile(s_val, 0.95))
        r = {f"val {k}": _auroc(s_val, score(z)) for k, z in val_shifts.items()}
        r["val mean (selection)"] = float(np.mean(list(r.values())))
        r["test: Coma AUROC"] = _auroc(s_test, score(splits.novelty_input("ood")))
        r["test: unit_errors AUROC"] = _auroc(s_test, score(splits.shifts["unit_errors"]))
        r["test: unit_errors detected at val 95 %"] = float(
            (score(splits.shifts["unit_errors"]) > threshold).mean()
        )
        r["test: false alarms at val 95 %"] = float((s_test > threshold).mean())
        rows[name] = r
    keys = list(next(iter(rows.values())))
    width = max(len(k) for k in keys)
    print(f"{'':{width}}  " + "  ".join(f"{n:>20}" for n in rows))
    for k in keys:
        print(f"{k:{width}}  " + "  ".join(f"{rows[n][k]:>20.3f}" for n in rows))
    best = max(rows, key=lambda n: rows[n]["val mean (selection)"])
    print(f"\nhighest validation mean: {best}")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "candidates": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
