"""Data-directory resolution and the task registry: no data set needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_core.data import DATA_DIR_ENV, TASK_LOADERS, DataDirError, load_icu, resolve_data_dir


def test_flag_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(other))
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    assert resolve_data_dir(None) == other
    assert resolve_data_dir("") == other  # an empty flag counts as not given


def test_unset_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataDirError, match="--data-dir") as info:
        resolve_data_dir(None)
    assert DATA_DIR_ENV in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(DataDirError, match=r"\$LRBNN_DATA_DIR"):
        resolve_data_dir(None)


def test_registry() -> None:
    assert TASK_LOADERS["icu"] is load_icu


def test_loader_without_data_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="support2"):
        load_icu(tmp_path)
