"""The service must not import training or CLI code (a serving image need not ship them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_imports_no_training_code() -> None:
    code = (
        "import sys; import service.app, service.main; "
        "bad = sorted(m for m in sys.modules if m.startswith(('model_core.training', 'model_core.cli'))); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_imports_no_data_set_loader() -> None:
    """The server replays ``model_core.data.preprocessing`` (and the tokenizer) per request; importing
    it must not run ``model_core/data/__init__.py``'s loaders (air, icu, sentiment, table, dataset)."""
    code = (
        "import sys; import service.app, service.main; "
        "loaders = ('air', 'icu', 'sentiment', 'table', 'dataset', 'paths'); "
        "bad = sorted(m for m in sys.modules "
        "if m.startswith('model_core.data.') and m.rpartition('.')[2] in loaders); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
