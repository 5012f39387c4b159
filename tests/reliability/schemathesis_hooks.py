"""Hooks for the schemathesis CLI, loaded by ``schemathesis.toml`` (``st run .../openapi.json``).

They supply what the in-process fuzz harness supplies (``fuzzing.shape_from_data``): the one fact of a V2
request JSON Schema cannot state, ``shape[0]`` = the rows of ``data``, set on positive cases only, so a
CLI run checks ``positive_data_acceptance`` on the infer operations as the CI test does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import schemathesis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzing import shape_from_data


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    shape_from_data(case)
