"""Alembic environment of the feedback app.

Run through :func:`rlhfkit.feedback.db.migrate`, which hands over an open connection in
``config.attributes["connection"]``; there is no alembic.ini.
"""

from alembic import context

from rlhfkit.feedback.db import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when someone runs `alembic` by hand
    raise RuntimeError("run migrations with rlhfkit.feedback.db.migrate(url)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
