"""Node-local resident numbers (node.schema.resident_numbers): small, dense, never reused, so that
the transparency record can hold a set of residents as a bitmap (node.transparency). And residents'
cell keys (node.schema.resident_cell_keys, node.cell_key): drawn with them, fixed forever."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from node.cell_key import KEY_RANGE
from node.schema import resident_cell_keys, resident_numbers

_CHUNK = 10_000


def _insert_new(dialect: str) -> Any:
    """An INSERT that skips residents already numbered: another writer may number the same
    resident at the same time, and the database's unique constraint decides, with no lock."""
    if dialect == "postgresql":
        return postgresql.insert(resident_numbers).on_conflict_do_nothing()
    return sqlite.insert(resident_numbers).on_conflict_do_nothing()


def number_selected(conn: sa.Connection, residents: sa.Select[Any]) -> None:
    """Number every resident that `residents` (a select of ids on `conn`) names and has none."""
    ids = residents.subquery()
    # In id order, as numbers_of: two writers numbering the same residents then wait for each
    # other in one order, never in a cycle (PostgreSQL would abort one as a deadlock).
    ordered = sa.select(ids.c[0]).order_by(ids.c[0])
    conn.execute(_insert_new(conn.dialect.name).from_select(["resident_id"], ordered))
    key_selected(conn, residents)


def _random_key(dialect: str) -> sa.ColumnElement[Any]:
    """A uniform random key in 0 .. KEY_RANGE - 1, drawn by the database: SQLite's random() is
    seeded from the operating system's randomness; PostgreSQL's from pg_strong_random. Keys are
    never shown to anyone, only perturbed counts are, so nobody sees the generator's output."""
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(sa.func.random() * KEY_RANGE), sa.Integer)
    return sa.func.abs(sa.func.random()) % KEY_RANGE


def key_selected(conn: sa.Connection, residents: sa.Select[Any]) -> None:
    """Give a random cell key to every resident that `residents` (a select of ids on `conn`)
    names and has none; a key, once drawn, is never changed."""
    ids = residents.subquery()
    keys = resident_cell_keys
    missing = (
        sa.select(ids.c[0], _random_key(conn.dialect.name))
        .where(~sa.exists().where(keys.c.resident_id == ids.c[0]))
        .order_by(ids.c[0])
    )
    insert = (
        postgresql.insert(keys) if conn.dialect.name == "postgresql" else sqlite.insert(keys)
    ).on_conflict_do_nothing()
    conn.execute(insert.from_select(["resident_id", "cell_key"], missing))


def numbers_of(conn: sa.Connection, residents: Sequence[str]) -> list[int]:
    """The numbers of `residents`, numbering those that have none."""
    insert = _insert_new(conn.dialect.name)
    residents = sorted(residents)
    numbers: list[int] = []
    for start in range(0, len(residents), _CHUNK):
        chunk = residents[start : start + _CHUNK]
        conn.execute(insert, [{"resident_id": r} for r in chunk])
        numbers += conn.execute(
            sa.select(resident_numbers.c.number).where(resident_numbers.c.resident_id.in_(chunk))
        ).scalars()
    return numbers
