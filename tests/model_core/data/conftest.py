"""Make ``model_core`` importable when the tests run from a checkout that was not pip-installed.

Why: ``make test`` installs the project in editable mode, but running ``.venv/bin/pytest`` straight from
a fresh checkout (no install) must work too; test folders have no ``__init__.py``, so pytest does not put
the repository root on ``sys.path`` by itself. With an editable install this changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parents[3])

if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
