"""PostgreSQL for tests that need more than the per-test `postgres_url` fixture gives: a
module-wide database (`postgres_database`, from the conftest), a second role (`admin_engine`)."""

from __future__ import annotations

import sqlalchemy as sa

from tests.conftest import POSTGRES_ADMIN_URL, postgres_database

__all__ = ["admin_engine", "postgres_database"]


def admin_engine() -> sa.Engine:
    """The server's superuser, autocommitting (CREATE DATABASE, roles, grants)."""
    return sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
