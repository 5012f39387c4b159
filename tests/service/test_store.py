"""The prediction store on a real SQLite file: schema by Alembic, the off-path writer, outcomes, retention."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from service.store.db import PredictionStore
from service.store.engine import default_url, make_engine, migrate
from service.store.records import PredictionBatch, StoreResult


def _batch(
    ids: list[str], model: str = "m", created: float | None = None, features: bool = True
) -> PredictionBatch:
    n = len(ids)
    mean = np.linspace(0.1, 0.9, n).astype(np.float32)
    return PredictionBatch(
        ids=ids,
        created=time.time() if created is None else created,
        model=model,
        version="1",
        sha256="ab" * 32,
        outputs={
            "mean": mean,
            "variance": mean * (1 - mean),
            "novelty_score": np.arange(n, dtype=np.float32),
        },
        ood=np.array([i % 2 == 0 for i in range(n)]),
        reasons=[["novelty"] if i % 2 == 0 else [] for i in range(n)],
        sets=[["no", "yes"]] * n,
        features=np.arange(n * 3, dtype=np.float32).reshape(n, 3) if features else None,
    )


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    counts: dict[tuple[str, StoreResult], int] = {}

    def counted(model: str, result: StoreResult, n: int) -> None:
        counts[(model, result)] = counts.get((model, result), 0) + n

    s = PredictionStore(default_url(tmp_path / "state"), queue_limit=50, counted=counted)
    s.counts = counts  # type: ignore[attr-defined]
    s.open()
    assert s.wait_ready(10), s.error
    yield s
    s.close()


def test_a_0001_store_upgrades_keeping_its_rows_and_downgrades_back(tmp_path: Path) -> None:
    """A store made by the first release (0001) gains card_feedback on start, its rows intact; the
    downgrade removes exactly that table again."""
    from importlib.resources import files

    from alembic import command
    from alembic.config import Config

    engine = make_engine(default_url(tmp_path))
    cfg = Config()
    cfg.set_main_option("script_location", str(files("service.store") / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql("INSERT INTO predictions VALUES ('a1', 1.0, 'm', '1', 'x', 0, '{}', NULL)")
    assert "card_feedback" not in inspect(engine).get_table_names()
    migrate(engine)
    assert "card_feedback" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT id FROM predictions").scalars().all() == ["a1"]
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert set(inspect(engine).get_table_names()) >= {"predictions", "outcomes"}
    assert "card_feedback" not in inspect(engine).get_table_names()
    engine.dispose()


def test_migrations_reach_head_and_match_the_schema(tmp_path: Path) -> None:
    engine = make_engine(default_url(tmp_path))
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    from importlib.resources import files

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("service.store") / "migrations"))
    assert current == ScriptDirectory.from_config(cfg).get_current_head() == "0002"
    tables = inspect(engine)
    assert {c["name"] for c in tables.get_columns("predictions")} == {
        "id",
        "created",
        "model",
        "version",
        "sha256",
        "ood",
        "outputs",
        "features",
    }
    assert {c["name"] for c in tables.get_columns("outcomes")} == {
        "prediction_id",
        "model",
        "value",
        "received",
    }
    assert {c["name"] for c in tables.get_columns("card_feedback")} == {
        "prediction_id",
        "model",
        "outcome",
        "override_reason",
        "received",
    }
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_concurrent_migrations_of_one_file_migrate_once(tmp_path: Path) -> None:
    url, errors = default_url(tmp_path), []

    def run() -> None:
        try:
            engine = make_engine(url)
            migrate(engine)
            engine.dispose()
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_written_rows_hold_outputs_and_features(store: PredictionStore, tmp_path: Path) -> None:
    ids = [f"{i:032x}" for i in range(5)]
    assert store.submit(_batch(ids))
    assert store.flush(5)
    con = sqlite3.connect(tmp_path / "state" / "predictions.sqlite")
    rows = con.execute(
        "SELECT id, model, version, ood, outputs, features FROM predictions ORDER BY id"
    ).fetchall()
    assert [r[0] for r in rows] == ids
    first = orjson.loads(rows[0][4])
    assert first["mean"] == pytest.approx(0.1, abs=1e-6) and first["ood_reasons"] == ["novelty"]
    assert first["prediction_set"] == ["no", "yes"] and first["ood"] is True
    assert np.frombuffer(rows[1][5], dtype="<f4").tolist() == [3.0, 4.0, 5.0]
    assert store.counts[("m", StoreResult.STORED)] == 5  # type: ignore[attr-defined]


def test_features_off_stores_null(store: PredictionStore, tmp_path: Path) -> None:
    store.submit(_batch(["a" * 32], features=False))
    assert store.flush(5)
    con = sqlite3.connect(tmp_path / "state" / "predictions.sqlite")
    assert con.execute("SELECT features FROM predictions").fetchall() == [(None,)]


def test_lookup_outcomes_and_the_first_one_stands(store: PredictionStore) -> None:
    store.submit(_batch(["a" * 32, "b" * 32]))
    store.submit(_batch(["c" * 32], model="other"))
    assert store.flush(5)
    found = store.lookup("m", ["a" * 32, "b" * 32, "c" * 32, "z" * 32])
    assert set(found) == {"a" * 32, "b" * 32}  # another model's id is not this model's
    assert store.record_outcomes("m", {"a" * 32: 1.0}, time.time()) == set()
    assert store.record_outcomes("m", {"a" * 32: 0.0, "b" * 32: 0.0}, time.time()) == {"a" * 32}
    assert store.lookup("m", ["a" * 32])["a" * 32][1] is True
    joined = {o.value for o in store.recent_outcomes("m", 10)}
    assert joined == {1.0, 0.0} and store.count("m") == (2, 2)


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    counts: dict[StoreResult, int] = {}
    s = PredictionStore(
        "postgresql+psycopg://nobody@127.0.0.1:1/none",  # nothing listens on port 1: never opens
        queue_limit=4,
        counted=lambda model, result, n: counts.__setitem__(result, counts.get(result, 0) + n),
    )
    s.open()
    # submit answers while no database was ever reached: it queues, it does not connect
    accepted = [s.submit(_batch([f"{i:032x}"])) for i in range(10)]
    assert accepted == [True] * 4 + [False] * 6
    assert counts[StoreResult.QUEUE_FULL] == 6
    deadline = time.monotonic() + 20
    while "OperationalError" not in (s.error or "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not s.ready and "OperationalError" in (s.error or "")
    assert s.flush(0.2) is False  # nothing written: a caller waiting for it gets a bounded wait
    s.close(timeout_s=5)
    assert counts[StoreResult.ERROR] == 4  # what was queued when it stopped, never written


def test_retention_purges_old_predictions_and_their_outcomes(store: PredictionStore) -> None:
    old = time.time() - 10 * 86400
    store.submit(_batch(["a" * 32], created=old))
    store.submit(_batch(["b" * 32]))
    assert store.flush(5)
    store.record_outcomes("m", {"a" * 32: 1.0, "b" * 32: 0.0}, time.time())
    assert store.purge(time.time() - 5 * 86400) == 1
    assert store.count("m") == (1, 1)
    assert set(store.lookup("m", ["a" * 32, "b" * 32])) == {"b" * 32}
