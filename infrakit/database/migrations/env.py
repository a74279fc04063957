"""Alembic environment for the kit's own tables.

Run only through :func:`infrakit.database.upgrade`, which hands over an open
connection; nothing here reads an ini file or calls ``logging.config.fileConfig``
(which would disable the application's loggers).
"""

from __future__ import annotations

from alembic import context

from infrakit.database.migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - guarded by infrakit.database.upgrade
    raise RuntimeError("infrakit's migrations run through infrakit.database.upgrade()")

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
