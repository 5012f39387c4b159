"""Generic CSV loader: any tabular file becomes :class:`TabularSplits` with one call.

Why: users of the library bring their own tables, and the built-in tasks (e.g. :mod:`model_core.data.icu`)
need the same split -> fit-on-train -> transform pipeline. Both go through :func:`assemble_splits`, so the
leakage rules (preprocessing fitted on training rows only, OOD rows removed before splitting) live in one
place.

pandas is imported inside the functions, not at module level, because ``model_core.data`` is also
imported by the serving process, which only needs :mod:`model_core.data.preprocessing` and should not
pay for (or depend on) pandas.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_core.data.dataset import TabularSplits, Task, split_indices
from model_core.data.preprocessing import Preprocessor

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["assemble_splits", "binary_labels", "load_csv"]


def load_csv(
    path: str | os.PathLike[str],
    target: str,
    task: Task = "binary",
    ood_query: str | None = None,
    seed: int = 0,
    categorical: Sequence[str] | None = None,
    drop: Sequence[str] = (),
) -> TabularSplits:
    """Load a CSV, split it 70/15/15 with ``seed`` and fit the preprocessing on the training split.

    * Every column except ``target`` and ``drop`` (use it for IDs and leaking columns) is a feature.
      Columns with a non-numeric dtype are categorical; ``categorical`` forces others to be (e.g. integer
      codes such as a region number, whose numeric order means nothing).
    * Rows with a missing target are dropped: they cannot be trained on or scored.
    * Binary targets may be 0/1, booleans, or any two distinct values; the sorted distinct values map to
      0 and 1 and are recorded in ``label_names`` so "1" is never ambiguous.
    * ``ood_query`` (a ``DataFrame.query`` expression, backticks around names with dots) selects rows
      that are removed before splitting and returned as the OOD set; ``x_ood`` is empty without it.
    """
    import pandas as pd

    path = Path(path)
    frame = pd.read_csv(path)
    if target not in frame.columns:
        raise ValueError(f"target column {target!r} not in {path} (columns: {list(frame.columns)})")
    frame = frame.reset_index(drop=True)
    n_read = len(frame)
    frame = frame[frame[target].notna()]

    unknown = sorted((set(drop) | set(categorical or ())) - set(frame.columns))
    if unknown:
        raise ValueError(f"columns not in {path}: {unknown}")
    if target in set(categorical or ()):
        raise ValueError(f"the target {target!r} cannot also be a categorical feature")
    features = [name for name in frame.columns if name != target and name not in set(drop)]
    if not features:
        raise ValueError(f"{path} has no feature columns besides the target")
    forced = set(categorical or ())
    cat_features = {
        name
        for name in features
        if name in forced
        or not (pd.api.types.is_numeric_dtype(frame[name]) or pd.api.types.is_bool_dtype(frame[name]))
    }

    label_names: list[str] | None
    if task == "binary":
        y, label_names = binary_labels(frame[target], target)
    elif task == "regression":
        if not pd.api.types.is_numeric_dtype(frame[target]):
            raise ValueError(f"regression target {target!r} must be numeric, got dtype {frame[target].dtype}")
        y = frame[target].to_numpy(dtype=np.float32)
        label_names = None
    else:
        raise ValueError(f"task must be 'binary' or 'regression', got {task!r}")

    ood_mask = np.zeros(len(frame), dtype=bool)
    if ood_query:
        try:
            selected = frame.query(ood_query)
        except Exception as exc:  # pandas raises many types for a bad expression; report them uniformly
            raise ValueError(f"invalid ood_query {ood_query!r}: {exc}") from exc
        ood_mask = frame.index.isin(selected.index)
        if ood_mask.all():
            raise ValueError(f"ood_query {ood_query!r} selects every row; nothing is left to train on")

    ood_text = (
        f"OOD = the {int(ood_mask.sum())} rows matching {ood_query!r}, removed before splitting"
        if ood_query
        else "no OOD set"
    )
    description = (
        f"{path.name}: predict {target!r} ({task}) from {len(features)} columns "
        f"({len(cat_features)} categorical); {len(frame)} of {n_read} rows have a target. {ood_text}. "
        f"The remaining rows are split 70/15/15 train/val/test at random with seed {seed}"
        f"{' (stratified by label)' if task == 'binary' else ''}; clipping, imputation and scaling are "
        "fitted on the training split only."
    )
    return assemble_splits(
        frame,
        features=features,
        categorical=cat_features,
        y=y,
        ood_mask=ood_mask,
        seed=seed,
        task=task,
        target_name=target,
        dataset=path.stem,
        description=description,
        label_names=label_names,
    )


def binary_labels(values: pd.Series, name: str) -> tuple[np.ndarray, list[str]]:
    """Map a two-valued column to int64 0/1 by sorted value and return the value names.

    Sorting (rather than order of appearance) makes the mapping independent of row order and of the
    split seed, so label 1 means the same thing in every checkpoint trained on the file.
    """
    import pandas as pd

    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        raw = values.to_numpy()
        distinct = np.unique(raw)
        names = [_label_name(value) for value in distinct]
        codes = np.searchsorted(distinct, raw)
    else:
        strings = values.astype(str).to_numpy(dtype=object)
        names = sorted(set(strings.tolist()))
        lookup = {label: code for code, label in enumerate(names)}
        codes = np.fromiter((lookup[s] for s in strings), dtype=np.int64, count=len(strings))
    if len(names) != 2:
        raise ValueError(f"binary target {name!r} must have exactly two distinct values, got {names[:10]}")
    return codes.astype(np.int64), names


def _label_name(value: Any) -> str:
    """Readable name of a numeric/bool label value ("1" rather than "1.0")."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def assemble_splits(
    frame: pd.DataFrame,
    *,
    features: Sequence[str],
    categorical: Collection[str],
    y: np.ndarray,
    ood_mask: np.ndarray,
    seed: int,
    task: Task,
    target_name: str,
    dataset: str,
    description: str,
    label_names: list[str] | None = None,
    units: Mapping[str, str] | None = None,
) -> TabularSplits:
    """Split the in-distribution rows, fit the preprocessing on train only, and transform every split.

    The order matters and is the point of this function: OOD rows are set aside first (so none reach
    training or the fitted constants), the split is drawn next, and only then is the preprocessor fitted,
    on the training positions alone. ``y`` and ``ood_mask`` are aligned with ``frame``'s rows.
    """
    if len(y) != len(frame) or len(ood_mask) != len(frame):
        raise ValueError("y and ood_mask must have one entry per frame row")
    ood_mask = np.asarray(ood_mask, dtype=bool)
    in_dist = np.flatnonzero(~ood_mask)
    ood = np.flatnonzero(ood_mask)
    train, val, test = split_indices(len(in_dist), y[in_dist] if task == "binary" else None, seed=seed)
    positions = {"train": in_dist[train], "val": in_dist[val], "test": in_dist[test], "ood": ood}

    columns = frame[list(features)]
    preprocessor = Preprocessor.fit(columns.iloc[positions["train"]], features, set(categorical), units)
    arrays: dict[str, Any] = {}
    unclipped: dict[str, np.ndarray] = {}
    for split, rows in positions.items():
        unclipped[split] = preprocessor.transform_frame(columns.iloc[rows], clip=False)
        arrays[f"x_{split}"] = preprocessor.clip(unclipped[split])
        arrays[f"y_{split}"] = y[rows]
    index = frame.index.to_numpy()
    sizes = ", ".join(f"{split} {len(rows)}" for split, rows in positions.items())
    return TabularSplits(
        **arrays,
        preprocessor=preprocessor,
        feature_names=list(features),
        task=task,
        target_name=target_name,
        description=f"{description} Sizes: {sizes}.",
        dataset=dataset,
        label_names=label_names,
        source_rows={split: index[rows].astype(np.int64) for split, rows in positions.items()},
        unclipped=unclipped,
    )
