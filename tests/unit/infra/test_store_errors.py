"""Database failures that are conditions of the service (down, full) become StoreError with a
reason; anything else stays a bug."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

from infra.store_errors import store_error


def _operational(message: str) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


def test_a_full_disk_is_store_full() -> None:
    err = store_error(_operational("database or disk is full"))
    assert err is not None and (err.code, err.reason) == ("UNAVAILABLE", "STORE_FULL")


def test_a_lost_or_refused_connection_is_store_unavailable() -> None:
    for e in (
        _operational("server closed the connection unexpectedly"),
        sa.exc.InterfaceError("SELECT 1", {}, sqlite3.InterfaceError("connection already closed")),
        sa.exc.TimeoutError("QueuePool limit reached"),
    ):
        err = store_error(e)
        assert err is not None and (err.code, err.reason) == ("UNAVAILABLE", "STORE_UNAVAILABLE")


def test_the_message_names_no_sql_or_data() -> None:
    err = store_error(_operational("relation secret_table password=hunter2"))
    assert err is not None
    assert "secret" not in err.message and "hunter2" not in err.message


def test_bugs_stay_bugs() -> None:
    integrity = sa.exc.IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE failed"))
    assert store_error(integrity) is None
    assert store_error(ValueError("nope")) is None
