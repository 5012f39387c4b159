"""Fixtures shared by the model_core tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_core.data import load_csv
from model_core.models import Method
from model_core.training.pipeline import TrainOptions, train_checkpoint

#: the small checkpoint's training: seed 0, S = 16 (tests recompute its calibration with these)
SMALL_SEED = 0
SMALL_SAMPLES = 16


@pytest.fixture(scope="session")
def small_checkpoint(toy_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint trained by the real pipeline on ``toy_csv`` (seconds): novelty and conformal
    calibration included. Read-only: tests that tamper with it copy it first."""
    out = tmp_path_factory.mktemp("ckpt") / "toy" / "1"
    train_checkpoint(
        load_csv(toy_csv, "label"),
        TrainOptions(
            method=Method.LOWRANK,
            rank=2,
            hidden=(8, 8),
            epochs=3,
            progress=False,
            samples=SMALL_SAMPLES,
            model_name="toy",
            seed=SMALL_SEED,
        ),
        out,
    )
    return out
