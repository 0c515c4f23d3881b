"""Database engines and migrations. SQLite (WAL, fully synchronous) by default; PostgreSQL via psycopg 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from federation.errors import StoreError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we reply, which the log's durability rule needs.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def create_engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(
                url, connect_args={"check_same_thread": False}, pool_size=16, max_overflow=16
            )
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise StoreError(
            f"cannot use database {url!r}: {e}", reason="DATABASE_URL_INVALID"
        ) from None
    return engine


def alembic_config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(engine), revision)
    except sa.exc.OperationalError as e:
        raise StoreError(
            f"cannot migrate database: {e.orig}", reason="DATABASE_UNAVAILABLE"
        ) from None


def downgrade(engine: sa.Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)
