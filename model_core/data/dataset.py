"""The common container every tabular loader returns, and the seeded split it is built from.

Why one container: training, evaluation, calibration and OOD benchmarks all need the same seven things
(train/val/test/OOD arrays, the fitted preprocessing, and enough metadata to explain the numbers later).
If each loader returned its own shape, every consumer would grow per-data-set branches. ``TabularSplits``
is plain numpy (no torch) so that it is cheap to build in tests and to hand to any framework.

Why a hand-written split instead of scikit-learn: the split must be reproducible bit for bit from
``seed`` alone across library versions, since published numbers and checkpoints refer to it, and numpy's
``default_rng`` permutation is a stable contract. The split is stratified by label for binary tasks so
that the small validation and test splits keep the class balance (calibration metrics such as ECE are
sensitive to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from model_core.data.preprocessing import Preprocessor

__all__ = ["SPLIT_FRACTIONS", "TabularSplits", "Task", "split_indices"]

Task = Literal["binary", "regression"]

#: train / val / test fractions of the in-distribution rows.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


@dataclass
class TabularSplits:
    """Preprocessed splits of one tabular data set, plus what is needed to reproduce and explain them.

    Features are float32 ``(n, preprocessor.n_outputs)``; labels are int64 class indices for binary
    tasks and float32 for regression. ``x_ood``/``y_ood`` hold rows deliberately kept out of
    train/val/test to measure behaviour under distribution shift; they are empty (``(0, n_outputs)``)
    when a data set has no OOD definition. ``source_rows`` maps each split name to the 0-based data-row
    positions in the source file, so any prediction can be traced back to its raw record and tests can
    verify that fitting used training rows only.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_ood: np.ndarray
    y_ood: np.ndarray
    preprocessor: Preprocessor
    feature_names: list[str]
    task: Task
    target_name: str
    description: str
    dataset: str
    label_names: list[str] | None = None
    source_rows: dict[str, np.ndarray] = field(default_factory=dict)
    #: per split name, the inputs scaled but not clipped (``Preprocessor.transform_frame(clip=False)``):
    #: what the novelty detector is fitted on and scores, since clipping would hide a unit error from it.
    #: Absent for a split (or a loader without clipping, e.g. text): the novelty input is ``x_<split>``.
    unclipped: dict[str, np.ndarray] = field(default_factory=dict)
    #: constructed shift sets (name -> unclipped inputs, as ``unclipped``), evaluated as ``ood_<name>``:
    #: e.g. the ICU test patients sent with unit errors (``model_core.data.icu.unit_errors``)
    shifts: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Catch shape/dtype mistakes at construction, where the loader that made them is on the stack."""
        width = self.preprocessor.n_outputs
        label_dtype = np.int64 if self.task == "binary" else np.float32
        for split in ("train", "val", "test", "ood"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if x.ndim != 2 or x.shape[1] != width or x.dtype != np.float32:
                raise ValueError(f"x_{split} must be float32 (n, {width}), got {x.dtype} {x.shape}")
            if y.shape != (x.shape[0],) or y.dtype != label_dtype:
                raise ValueError(
                    f"y_{split} must be {np.dtype(label_dtype)} ({x.shape[0]},), got {y.dtype} {y.shape}"
                )

    def novelty_input(self, split: str) -> np.ndarray:
        """The input the novelty detector sees for ``split``: unclipped where the loader kept it."""
        return self.unclipped.get(split, getattr(self, f"x_{split}"))

    @property
    def n_features(self) -> int:
        """Model input width (after one-hot expansion)."""
        return self.preprocessor.n_outputs

    @property
    def sizes(self) -> dict[str, int]:
        """Row counts per split, for logs and reports."""
        return {
            "train": len(self.y_train),
            "val": len(self.y_val),
            "test": len(self.y_test),
            "ood": len(self.y_ood),
        }

    def class_weights(self) -> np.ndarray:
        """Per-class loss weights ``n / (n_classes * n_c)`` from the training labels (binary only).

        Inverse frequency counters class imbalance (e.g. 26% in-hospital deaths) without resampling; the
        normalisation makes the weights average to exactly 1 over the training examples, so the weighted
        loss keeps the scale of the unweighted one and learning rates / KL weights need no retuning.
        """
        if self.task != "binary":
            raise ValueError(f"class weights are defined for binary tasks, not {self.task!r}")
        counts = np.bincount(self.y_train, minlength=2).astype(np.float64)
        if (counts == 0).any():
            raise ValueError(f"a class is absent from the training split (counts {counts.tolist()})")
        weights = counts.sum() / (len(counts) * counts)
        return weights.astype(np.float32)


def split_indices(
    n_rows: int,
    labels: np.ndarray | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test positions into ``range(n_rows)``, stratified by ``labels`` when given.

    Each class is permuted and cut separately (rounding per class), so every split keeps the class
    ratio up to one row per class. The returned index arrays are shuffled (classes interleaved) so that
    consumers which do not shuffle still see mixed batches.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [np.arange(n_rows)]
    else:
        labels = np.asarray(labels)
        if labels.shape != (n_rows,):
            raise ValueError(f"labels must have shape ({n_rows},), got {labels.shape}")
        groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    parts: list[list[np.ndarray]] = [[], [], []]
    for group in groups:
        order = rng.permutation(group)
        n_train = round(fractions[0] * len(order))
        n_val = round(fractions[1] * len(order))
        parts[0].append(order[:n_train])
        parts[1].append(order[n_train : n_train + n_val])
        parts[2].append(order[n_train + n_val :])
    train, val, test = (
        rng.permutation(np.concatenate(chunks)).astype(np.int64) if chunks else np.zeros(0, np.int64)
        for chunks in parts
    )
    return train, val, test
