"""Hot reloads shared between worker processes (``service/sync.py``), without processes: the folder
protocol, and a preloading worker switching to the published version before it serves."""

from __future__ import annotations

from pathlib import Path

import toy
from service_helpers import copy_version

from service.repository import ModelRepository
from service.settings import Settings
from service.sync import ReloadBroadcast


def test_publish_then_desired_reports_each_change_once(tmp_path: Path) -> None:
    sync = ReloadBroadcast(tmp_path / "reload")
    assert sync.desired() == {}
    sync.publish("toy", "1")
    sync.publish("odd/name", "7")  # names are quoted into file names
    assert sync.desired(changed_only=True) == {"toy": "1", "odd/name": "7"}
    assert sync.desired(changed_only=True) == {}  # nothing changed since
    sync.publish("toy", "2")
    assert sync.desired(changed_only=True) == {"toy": "2"}
    assert sync.desired() == {"toy": "2", "odd/name": "7"}


def test_unreadable_record_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "reload"
    folder.mkdir()
    (folder / "toy.json").write_text("{not json")
    assert ReloadBroadcast(folder).desired() == {}


def test_reconcile_switches_a_preloaded_repository_to_the_published_version(
    repo: Path, tmp_path: Path
) -> None:
    copy_version(repo, "1", "2")
    repository = ModelRepository(Settings(model_repository=repo))
    repository.load_all()
    assert repository.get(toy.MODEL).version == "2"  # the newest, by default
    sync = ReloadBroadcast(tmp_path / "reload")
    sync.publish(toy.MODEL, "1")  # an admin rolled back while this worker was not running
    sync.reconcile(repository)
    assert repository.get(toy.MODEL).version == "1"
    sync.publish(toy.MODEL, "9")  # a version this repository cannot load: the loaded one keeps serving
    sync.reconcile(repository)
    assert repository.get(toy.MODEL).version == "1"
