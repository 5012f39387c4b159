"""Alembic environment: migrations run on the connection :func:`service.store.engine.migrate` passes in.

On PostgreSQL a transaction-scoped advisory lock serialises the upgrade, so several server processes
starting at once on one database migrate it once (SQLite: the caller holds a file lock).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from service.store.schema import metadata

#: an arbitrary, fixed key of the advisory lock ("lrbn" in ASCII)
PG_LOCK_KEY = 0x6C72626E

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    context.run_migrations()
