"""One way to replace a small file so that a reader never sees it half-written.

The bytes go to a temporary file in the target's folder (the same filesystem), which then replaces the
target with ``os.replace`` (atomic on POSIX). Used by the workers' shared folders (``sync.py``,
``monitoring/drift_share.py``): state that is rewritten often and rebuilt after a crash, so no fsync.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(target: Path, data: bytes, tmp_prefix: str = ".tmp-") -> None:
    """Replace ``target`` with ``data``; on failure the temporary file is removed and the error raised.
    ``tmp_prefix`` names the temporary file (a folder's cleaner may look for its own strays)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=tmp_prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
