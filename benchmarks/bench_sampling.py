"""Standalone entry point of the sampling benchmark: ``.venv/bin/python benchmarks/bench_sampling.py --json``.

The same as ``lrbnn bench sampling``; see :mod:`model_core.sampling.bench` for what is measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from model_core.sampling.bench import main_bench_sampling

if __name__ == "__main__":
    sys.exit(main_bench_sampling(sys.argv[1:]))
