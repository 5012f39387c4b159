"""Data loading and preprocessing for the tabular tasks.

Importing this package is cheap and safe on any machine: no data set is read, pandas is only imported
when a loader runs, and :mod:`model_core.data.preprocessing` (what the server replays per request)
needs only numpy and pydantic. Data sets are located through :func:`resolve_data_dir` (``--data-dir``,
else ``$LRBNN_DATA_DIR``), never through a path baked into the code.
"""

from __future__ import annotations

import os
from typing import Protocol

from model_core.data.air import AIR_FEATURES, SequenceSplits, load_air
from model_core.data.dataset import SPLIT_FRACTIONS, TabularSplits, Task, split_indices
from model_core.data.icu import ICU_EXCLUDED, ICU_FEATURES, ICU_OOD_CLASS, load_icu
from model_core.data.paths import DATA_DIR_ENV, DataDirError, resolve_data_dir
from model_core.data.preprocessing import FeatureSpec, PreprocessingError, Preprocessor
from model_core.data.sentiment import TextSplits, load_sentiment
from model_core.data.table import load_csv

__all__ = [
    "AIR_FEATURES",
    "DATA_DIR_ENV",
    "ICU_EXCLUDED",
    "ICU_FEATURES",
    "ICU_OOD_CLASS",
    "SPLIT_FRACTIONS",
    "TASK_LOADERS",
    "DataDirError",
    "FeatureSpec",
    "PreprocessingError",
    "Preprocessor",
    "SequenceSplits",
    "TabularSplits",
    "Task",
    "TaskLoader",
    "TextSplits",
    "load_air",
    "load_csv",
    "load_icu",
    "load_sentiment",
    "resolve_data_dir",
    "split_indices",
]


class TaskLoader(Protocol):
    """What a built-in task loader looks like: a data directory and a split seed in, splits out."""

    def __call__(self, data_dir: str | os.PathLike[str], seed: int = 0) -> TabularSplits: ...


#: Built-in tasks by the name the CLI and benchmarks use.
#: "air" returns :class:`SequenceSplits` (a TabularSplits with (n, 24, 15) windows); "sentiment"
#: (Rotten Tomatoes) returns :class:`TextSplits` (int64 (n, max_len) token ids, tokenizer as preprocessor).
TASK_LOADERS: dict[str, TaskLoader] = {
    "icu": load_icu,
    "air": load_air,
    "sentiment": load_sentiment,
}
