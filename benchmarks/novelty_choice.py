"""Choose the ICU novelty score by validation data only (issue #14).

    .venv/bin/python benchmarks/novelty_choice.py --data-dir ../shared/data --seeds 0 1 2 [--json out.json]

Every candidate is built from the two components of :mod:`model_core.novelty`, fitted on the training
split's unclipped scaled inputs: ``d``, the Ledoit-Wolf Mahalanobis distance, and ``t``, the per-feature
tail score on the numeric columns (on its log axis, offset 0.01 unless named), each divided by its
training 99th percentile. Candidates: ``d`` alone (the detector until session 14), ``t`` alone,
``max(d, t)``, ``hypot(d, t)``, ``d + w·t``, and ``d + t`` with the tail axis' offset 0.01 (served),
0.03, 0.1 and 1e3 (a linear axis). Two selection criteria, both on validation rows only:

* **unit errors**: the fraction of the mixed unit-error set built on the *validation* patients
  (``model_core.data.icu.unit_error_frames``) flagged by "implausible, or score above its threshold",
  the threshold set so that this rule flags 2.5 % of the unchanged validation patients: the share of
  the 5 % that the served decision leaves to the novelty score beside the epistemic one (both get the
  same tail level); the 5 % column is printed too;
* **a disease class held out**: for each of the three in-distribution disease classes, the detector
  refitted on the training patients of the other two, and its AUROC of that class's validation patients
  against the others' (a new kind of patient, as Coma is, without reading a Coma row).

The choice is the highest mean of the two criteria, averaged over the seeds. The test-split columns
(Coma AUROC, test unit errors detected, test false alarms) are printed for the record and are not used.
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

Score = Callable[[np.ndarray], np.ndarray]


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def candidates(x_train: np.ndarray, columns: np.ndarray) -> dict[str, Score]:
    """The candidate scores fitted on ``x_train`` (the components normalised by their training refs)."""
    from model_core.novelty import INPUT_CAP, REF_LEVEL, TailScore, fit_novelty

    det = fit_novelty("tabular", x_train, tail_columns=columns)
    assert det.tail is not None and det.refs is not None
    tail, refs = det.tail, det.refs

    def cap(z: np.ndarray) -> np.ndarray:
        return np.clip(z, -INPUT_CAP, INPUT_CAP).astype(np.float64)

    def d(z: np.ndarray) -> np.ndarray:
        return det._distance(cap(z)) / refs[0]

    def t(z: np.ndarray) -> np.ndarray:
        return tail.score(cap(z)) / refs[1]

    def sum_with(offset: float) -> Score:
        other = TailScore.fit(cap(x_train), columns, offset=offset)
        ref = float(np.quantile(other.score(cap(x_train)), REF_LEVEL))
        return lambda z: d(z) + other.score(cap(z)) / ref

    out: dict[str, Score] = {
        "d (distance alone)": d,
        "t (tail alone)": t,
        "max(d, t)": lambda z: np.maximum(d(z), t(z)),
        "hypot(d, t)": lambda z: np.hypot(d(z), t(z)),
    }
    for w in (0.25, 0.5):
        out[f"d + {w}·t"] = lambda z, w=w: d(z) + w * t(z)
    out["d + t (served)"] = det.score
    for offset, label in ((0.03, "0.03"), (0.1, "0.1"), (1e3, "1e3: linear")):
        out[f"d + t, offset {label}"] = sum_with(offset)
    return out


def flag_threshold(scores: np.ndarray, implausible: np.ndarray, alpha: float = 0.05) -> float:
    """The smallest threshold at which "implausible or score > threshold" flags <= alpha of the rows."""
    for value in np.sort(np.unique(scores)):
        if ((scores > value) | implausible).mean() <= alpha:
            return float(value)
    return float(scores.max())


def evaluate_seed(data_dir: str, seed: int) -> dict[str, dict[str, float]]:
    import pandas as pd

    from model_core.data.icu import ICU_FEATURES, ICU_RELATIVE_PATH, ICU_TARGET, load_icu, unit_error_frames

    splits = load_icu(data_dir, seed=seed)
    pre = splits.preprocessor
    frame = pd.read_csv(Path(data_dir) / ICU_RELATIVE_PATH)
    frame = frame[frame[ICU_TARGET].notna()]
    val_frame = frame.loc[splits.source_rows["val"], list(ICU_FEATURES)]
    val_mixed = pre.transform_frame(unit_error_frames(val_frame)["unit_errors"], clip=False)
    train, val, test = (splits.novelty_input(s) for s in ("train", "val", "test"))
    cls_train = frame.loc[splits.source_rows["train"], "dzclass"].to_numpy()
    cls_val = frame.loc[splits.source_rows["val"], "dzclass"].to_numpy()
    columns = pre.numeric_columns
    held_out = {c: candidates(train[cls_train != c], columns) for c in np.unique(cls_train)}
    test_mixed, coma = splits.shifts["unit_errors"], splits.novelty_input("ood")
    rows: dict[str, dict[str, float]] = {}
    for name, score in candidates(train, columns).items():
        s_val, odd_val = score(val), pre.implausible_rows(val)
        levels = {a: flag_threshold(s_val, odd_val, a) for a in (0.05, 0.025)}

        def flagged(z: np.ndarray, alpha: float = 0.025, score: Score = score, th: dict = levels) -> float:
            return float(((score(z) > th[alpha]) | pre.implausible_rows(z)).mean())

        holdout = [
            _auroc(fits[name](val[cls_val != c]), fits[name](val[cls_val == c]))
            for c, fits in held_out.items()
        ]
        r = {
            "val unit errors at 5 %": flagged(val_mixed, 0.05),
            "val unit errors at 2.5 %": flagged(val_mixed),
            "val class held out AUROC": float(np.mean(holdout)),
        }
        r["val mean (selection)"] = 0.5 * (r["val unit errors at 2.5 %"] + r["val class held out AUROC"])
        r["test: unit errors at 2.5 %"] = flagged(test_mixed)
        r["test: glucose mmol/L at 2.5 %"] = flagged(splits.shifts["units_glucose_mmol"])
        r["test: false alarms at 2.5 %"] = flagged(test)
        r["test: Coma AUROC"] = _auroc(score(test), score(coma))
        rows[name] = r
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    per_seed = {seed: evaluate_seed(args.data_dir, seed) for seed in args.seeds}
    names = list(per_seed[args.seeds[0]])
    keys = list(per_seed[args.seeds[0]][names[0]])
    mean = {n: {k: float(np.mean([per_seed[s][n][k] for s in args.seeds])) for k in keys} for n in names}
    width = max(len(n) for n in names)
    print(f"mean over seeds {args.seeds}")
    print(f"{'candidate':{width}}  " + "  ".join(f"{k:>26}" for k in keys))
    for n in names:
        print(f"{n:{width}}  " + "  ".join(f"{mean[n][k]:>26.3f}" for k in keys))
    best = max(names, key=lambda n: mean[n]["val mean (selection)"])
    print(f"\nhighest validation mean: {best}")
    if args.json:
        payload = {"seeds": args.seeds, "chosen": best, "mean": mean, "per_seed": per_seed}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
