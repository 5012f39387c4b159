"""Where the data sets live: resolved from a flag or the environment, never baked in.

Why: the real data sets are large, licensed separately and read-only; the project must run (and its
import must succeed) on machines that do not have them. So every entry point takes a data directory
explicitly, resolved once here, and a missing one fails with instructions instead of a bare path error.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "DataDirError", "resolve_data_dir"]

#: Environment variable consulted when no ``--data-dir`` flag is given.
DATA_DIR_ENV = "LRBNN_DATA_DIR"


class DataDirError(FileNotFoundError):
    """No usable data directory; the message says how to provide one."""


def resolve_data_dir(flag: str | os.PathLike[str] | None) -> Path:
    """The data directory from ``flag`` (the CLI ``--data-dir``), else ``$LRBNN_DATA_DIR``.

    The flag wins so that one run can be pointed elsewhere without touching the environment. An empty
    value counts as unset (an empty env var is a common shell accident). The directory must exist:
    failing here is clearer than a missing-file error deep inside a loader.
    """
    source = "--data-dir"
    value = os.fspath(flag) if flag is not None else ""
    if not value:
        source = f"${DATA_DIR_ENV}"
        value = os.environ.get(DATA_DIR_ENV, "")
    if not value:
        raise DataDirError(
            f"no data directory given: pass --data-dir PATH or set {DATA_DIR_ENV}=PATH "
            "(the folder that contains e.g. support2/support2.csv)"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataDirError(
            f"data directory {str(path)!r} (from {source}) does not exist or is not a directory; "
            f"pass --data-dir PATH or set {DATA_DIR_ENV}=PATH"
        )
    return path
