"""Shared fixtures: generated data sets and tiny checkpoints (no test depends on the shared data dir)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model_core.layers import BayesianModule
from model_core.models import ArchitectureSpec, Likelihood, Method, build_model

# Every server a test starts (in process or as a subprocess) keeps its prediction store here, never in
# the working tree; a test of the store itself passes its own state_dir.
os.environ.setdefault("LRBNN_STATE_DIR", tempfile.mkdtemp(prefix="lrbnn-test-state-"))
# ... and opens no gRPC port (the default 8001 would collide between servers, or with a running one);
# the gRPC tests give their server a free port.
os.environ.setdefault("LRBNN_GRPC_PORT", "0")


def make_toy_csv(path: Path, n: int = 600, seed: int = 0) -> Path:
    """A binary task with a learnable signal, a categorical column and some missing values."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0, 1, n)
    x2 = rng.normal(5, 2, n)
    color = rng.choice(["red", "green", "blue"], n)
    logit = 2.0 * x1 - 0.8 * (x2 - 5) + (color == "red") * 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    x2_str = [("" if rng.random() < 0.05 else f"{v:.4f}") for v in x2]
    lines = ["x1,x2,color,label"] + [
        f"{a:.4f},{b},{c},{'yes' if t else 'no'}" for a, b, c, t in zip(x1, x2_str, color, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_csv(tmp_path_factory.mktemp("data") / "toy.csv")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data directory, or skip (real-data tests run in CI where it exists)."""
    raw = os.environ.get("LRBNN_DATA_DIR")
    if not raw or not (Path(raw) / "support2" / "support2.csv").is_file():
        pytest.skip("LRBNN_DATA_DIR with support2/support2.csv is not available")
    return Path(raw)


WideMlp = Callable[..., BayesianModule]


@pytest.fixture
def wide_mlp() -> WideMlp:
    """A seeded MLP builder whose posteriors are wide (ρ = -3), so every sampled output really is random:
    ``wide_mlp(method, likelihood=BERNOULLI, out=1, rank=15, in_features=44, hidden=(128, 128))``."""

    def build(
        method: Method,
        likelihood: Likelihood = Likelihood.BERNOULLI,
        out: int = 1,
        rank: int = 15,
        in_features: int = 44,
        hidden: tuple[int, ...] = (128, 128),
    ) -> BayesianModule:
        torch.manual_seed(0)
        spec = ArchitectureSpec(
            method=method,
            in_features=in_features,
            hidden=list(hidden),
            out_features=out,
            likelihood=likelihood,
            rank=rank if method is Method.LOWRANK else None,
        )  # type: ignore[arg-type]
        model = build_model(spec)
        for name, p in model.named_parameters():
            if "rho" in name:
                with torch.no_grad():
                    p.fill_(-3.0)
        return model

    return build
