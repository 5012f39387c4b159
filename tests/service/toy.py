"""A tiny trained checkpoint for service tests: a few seconds of CPU, no data download.

Tests may import training code; the service may not. Shared by ``tests/service`` and the subprocess
tests in ``tests/integration`` (which put this folder on ``sys.path``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

MODEL = "toy"
NUMERIC = ("age", "heart_rate", "creatinine")
CATEGORICAL = ("sex",)


def write_csv(path: Path, rows: int = 600, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 15, rows).round(1)
    hr = rng.normal(90, 20, rows).round(0)
    creat = np.abs(rng.normal(1.2, 0.6, rows)).round(2)
    sex = rng.choice(["female", "male"], rows)
    logit = 0.04 * (age - 60) + 0.03 * (hr - 90) + 0.8 * (creat - 1.2) + (sex == "male") * 0.3
    died = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    lines = ["age,heart_rate,creatinine,sex,died"]
    for i in range(rows):
        cr = "" if i % 17 == 0 else f"{creat[i]}"  # some missing values, imputed by the preprocessor
        lines.append(f"{age[i]},{hr[i]},{cr},{sex[i]},{died[i]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def train_toy(out_dir: Path, work: Path, version: str = "1", seed: int = 0) -> Path:
    """Train the toy model and write it to ``out_dir`` (a checkpoint directory)."""
    from model_core.data import load_csv
    from model_core.models.spec import Method
    from model_core.training.pipeline import TrainOptions, train_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    splits = load_csv(write_csv(work / "toy.csv", seed=seed), target="died", task="binary", seed=seed)
    opts = TrainOptions(
        method=Method.LOWRANK,
        rank=4,
        hidden=(16, 16),
        epochs=3,
        progress=False,
        model_name=MODEL,
        model_version=version,
        samples=32,
        seed=seed,
    )
    train_checkpoint(splits, opts, out_dir)
    return out_dir


def make_repository(root: Path, cache: Path) -> Path:
    """A model repository ``root/toy/1`` copied from a trained checkpoint in ``cache``."""
    target = root / MODEL / "1"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cache, target)
    return root


def instance(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {"age": 70.0, "heart_rate": 110.0, "creatinine": 1.5, "sex": "male"}
    row.update(overrides)
    return row
