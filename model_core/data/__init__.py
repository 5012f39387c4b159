"""Data loading and preprocessing for the tabular tasks.

Importing this package is cheap and safe on any machine: no data set is read, and nothing is imported
until a name is used (PEP 562 ``__getattr__``), so the server, which imports
:mod:`model_core.data.preprocessing` (replayed per request; numpy and pydantic only), loads none of the
data-set loaders. Data sets are located through :func:`resolve_data_dir` (``--data-dir``, else
``$LRBNN_DATA_DIR``), never through a path baked into the code.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from model_core.data.air import AIR_FEATURES, SequenceSplits, load_air
    from model_core.data.dataset import SPLIT_FRACTIONS, TabularSplits, Task, split_indices
    from model_core.data.features import FeatureSpec
    from model_core.data.icu import ICU_EXCLUDED, ICU_FEATURES, ICU_OOD_CLASS, load_icu
    from model_core.data.paths import DATA_DIR_ENV, DataDirError, resolve_data_dir
    from model_core.data.preprocessing import Preprocessor
    from model_core.data.sentiment import TextSplits, load_sentiment
    from model_core.data.table import load_csv
    from model_core.data.values import PreprocessingError

#: public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    **dict.fromkeys(("AIR_FEATURES", "SequenceSplits", "load_air"), "air"),
    **dict.fromkeys(("SPLIT_FRACTIONS", "TabularSplits", "Task", "split_indices"), "dataset"),
    **dict.fromkeys(("ICU_EXCLUDED", "ICU_FEATURES", "ICU_OOD_CLASS", "load_icu"), "icu"),
    **dict.fromkeys(("DATA_DIR_ENV", "DataDirError", "resolve_data_dir"), "paths"),
    "FeatureSpec": "features",
    "PreprocessingError": "values",
    "Preprocessor": "preprocessing",
    **dict.fromkeys(("TextSplits", "load_sentiment"), "sentiment"),
    "load_csv": "table",
}

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


def _task_loaders() -> dict[str, TaskLoader]:
    """Built-in tasks by the name the CLI and benchmarks use.

    "air" returns :class:`SequenceSplits` (a TabularSplits with (n, 24, 15) windows); "sentiment"
    (Rotten Tomatoes) returns :class:`TextSplits` (int64 (n, max_len) token ids, tokenizer as
    preprocessor).
    """
    from model_core.data.air import load_air
    from model_core.data.icu import load_icu
    from model_core.data.sentiment import load_sentiment

    return {"icu": load_icu, "air": load_air, "sentiment": load_sentiment}


def __getattr__(name: str) -> Any:
    if name == "TASK_LOADERS":
        value: Any = _task_loaders()
    elif name in _LAZY:
        value = getattr(importlib.import_module(f"model_core.data.{_LAZY[name]}"), name)
    else:
        raise AttributeError(f"module 'model_core.data' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return __all__
