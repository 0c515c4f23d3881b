"""Fresh databases and roles on the machine's PostgreSQL server for tests that need more than the
per-test `postgres_url` fixture gives (a module-wide database, a second role)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_ADMIN_URL


def admin_engine() -> sa.Engine:
    """The server's superuser, autocommitting (CREATE DATABASE, roles, grants)."""
    return sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database (its `postgresql://postgres@...` URL), dropped afterwards; the test skips
    with a message when the server is unreachable."""
    admin = admin_engine()
    name = f"citybroker_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as e:
        admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable, test skipped: {e.orig}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
