"""What a database failure means to a caller. A store that cannot be reached (PostgreSQL restarting,
a dropped connection, a locked SQLite file) or has no room left is a condition of the service, not a
bug: callers get UNAVAILABLE with a reason they can act on, and the pool reconnects on its own."""

from __future__ import annotations

import errno

import sqlalchemy as sa

from domain.errors import StoreError

# PostgreSQL's SQLSTATE class 53 (insufficient resources): 53100 disk_full, 53200 out_of_memory.
_PG_FULL = {"53100"}


def _is_full(orig: BaseException | None) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full"), PostgreSQL's disk_full, or ENOSPC."""
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in _PG_FULL or getattr(orig, "pgcode", None) in _PG_FULL:
        return True
    if getattr(orig, "errno", None) == errno.ENOSPC:
        return True
    return "disk is full" in str(orig).lower()


def store_error(error: BaseException) -> StoreError | None:
    """A StoreError for a database failure that is not the caller's or the code's fault: reason
    STORE_FULL when the disk is full, STORE_UNAVAILABLE when the database cannot be reached or
    failed the operation (OperationalError, InterfaceError, a connection the pool had to drop, no
    connection free in time). None for anything else, which stays a bug (INTERNAL)."""
    if isinstance(error, sa.exc.TimeoutError):
        return StoreError("no database connection became free in time; try again")
    if not isinstance(error, sa.exc.DBAPIError):
        return None
    orig = error.orig
    if _is_full(orig):
        return StoreError("the store's disk is full; try again later", reason="STORE_FULL")
    unavailable = isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError)
    if unavailable or error.connection_invalidated:
        # The driver's class name only: its message may quote SQL or data.
        return StoreError(
            f"the store is unavailable ({type(orig).__name__}); try again",
            reason="STORE_UNAVAILABLE",
        )
    return None
