"""Alembic environment: one migration history for every citybroker database (node or broker).

The engine comes from infra.storage (never from an ini file), so URLs stay in one place.
"""

from __future__ import annotations

from alembic import context

from audit.schema import metadata as log_metadata
from node.schema import metadata as node_metadata

target_metadata = [node_metadata, log_metadata]


def run() -> None:
    engine = context.config.attributes.get("engine")
    if engine is None:
        raise SystemExit("run migrations through infra.storage.upgrade(engine)")
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run()
