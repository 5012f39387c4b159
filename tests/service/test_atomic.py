"""The one atomic file replace of the workers' shared folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.atomic import write_atomic


def test_replaces_the_target_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_replace_keeps_the_old_content_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # os.replace cannot put a file over a directory
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(target, b"new", tmp_prefix=".tmp-7-")
    assert (target / "inside").read_text() == "kept"
    assert not list(tmp_path.glob(".tmp-7-*"))
