"""Rows as the database driver gets them, built in the workers: on SQLite straight to the
driver's executemany (values processed as SQLAlchemy would), elsewhere Python values for a
SQLAlchemy Core executemany; and canonical JSON for receipt payloads, fast."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from keys import dsse
from node.consent import ConsentRecord
from node.schema import consent_records, consent_scopes

COMMON_VALUES = 4096  # recurring values a worker keeps one object of (`Codec.common`)
RECORD_COLUMNS = tuple(c.name for c in consent_records.columns)
SCOPE_COLUMNS = tuple(c.name for c in consent_scopes.columns)
R_ID = RECORD_COLUMNS.index("record_id")
R_RESIDENT = RECORD_COLUMNS.index("resident_id")
R_STATE = RECORD_COLUMNS.index("state")
# Columns whose values recur from record to record (`Codec.common`).
R_RECURRING = tuple(
    RECORD_COLUMNS.index(c)
    for c in (
        "lawful_basis",
        "notice_url",
        "notice_hash",
        "language",
        "jurisdiction",
        "retention_days",
        "collection_method",
        "withdrawal_method",
        "state",
    )
)
R_FROM = RECORD_COLUMNS.index("valid_from")
R_UNTIL = RECORD_COLUMNS.index("valid_until")
R_DIGEST = RECORD_COLUMNS.index("content_digest")
S_STATE = SCOPE_COLUMNS.index("state")
S_UNTIL = SCOPE_COLUMNS.index("valid_until")
EVENT_COLUMNS = ("record_id", "event", "actor", "at", "batch_id", "valid_until", "salt")


class Codec:
    """Row values as the database driver gets them. On SQLite the rows go straight to the
    driver's executemany, so datetimes are turned into text here, exactly as SQLAlchemy's SQLite
    DATETIME type does; elsewhere they stay Python values for a SQLAlchemy Core executemany."""

    def __init__(self, driver_level: bool) -> None:
        self.driver_level = driver_level
        self.dt: Callable[[Any], Any] = sqlite_datetime if driver_level else _identity
        self._common: dict[Any, Any] = {}

    def common(self, value: Any) -> Any:
        """One object for each recurring value (a notice, a language, a purpose...): a batch's
        rows then pickle each just once, and the importing process, whose time is what limits
        an import, unpickles and frees a third fewer objects."""
        common = self._common
        if len(common) >= COMMON_VALUES:
            common.clear()  # values that do not recur, after all: stay bounded
        return common.setdefault(value, value)

    def record(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """A consent_records row (`record_row`) as a tuple in column order."""
        out = [row[c] for c in RECORD_COLUMNS]
        for i in R_RECURRING:
            out[i] = self.common(out[i])
        out[R_FROM] = self.dt(out[R_FROM])
        out[R_UNTIL] = self.dt(out[R_UNTIL])
        return tuple(out)

    def scopes(
        self, record: ConsentRecord, state: str, row: tuple[Any, ...]
    ) -> tuple[tuple[Any, ...], ...]:
        """The record's consent_scopes rows (`scope_rows`, as tuples), its times taken from its
        consent_records row `row` (already processed)."""
        rid, resident = row[R_ID], row[R_RESIDENT]
        valid_from, valid_until = row[R_FROM], row[R_UNTIL]
        common = self.common
        return tuple(
            (rid, common(p), common(r), common(c), resident, state, valid_from, valid_until)
            for p, r, c in record.scopes()
        )


assert SCOPE_COLUMNS == (
    "record_id",
    "purpose",
    "recipient",
    "data_category",
    "resident_id",
    "state",
    "valid_from",
    "valid_until",
)


def _identity(v: Any) -> Any:
    return v


_SQLITE_DATETIME: Callable[[Any], Any] = _identity
if _sqlite_dt := sa.DateTime().dialect_impl(sqlite_dialect()).bind_processor(sqlite_dialect()):
    _SQLITE_DATETIME = _sqlite_dt


def sqlite_datetime(value: datetime | None) -> str | None:
    """A datetime as SQLAlchemy's SQLite DATETIME type stores it: for the naive (UTC) ones the
    tables hold, isoformat writes the same text in less than half the time."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat(" ", "microseconds")
    return _SQLITE_DATETIME(value)  # type: ignore[no-any-return]


def receipt_json(obj: Any) -> bytes:
    """`dsse.canonical` for a receipt payload or a record's terms, through orjson.

    Their keys are fixed ASCII names and their values only strings, integers from 0 to 36500,
    None and lists of strings, built here from a validated record. For those, orjson with sorted
    keys writes exactly RFC 8785: the same escapes (short ones for \\b \\t \\n \\f \\r, lowercase
    \\u00xx for other controls), everything else as UTF-8. A property test compares the two on
    arbitrary text; a string orjson refuses (a lone surrogate) goes through dsse.canonical.
    """
    try:
        # A copy of the exact size: orjson's own result keeps its larger working buffer (about
        # 8 KB for a 700-byte payload), which thousands of payloads in flight would hold.
        return bytes(memoryview(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)))
    except orjson.JSONEncodeError:
        return dsse.canonical(obj)


def naive(value: Any) -> datetime | None:
    """A time of a row as `Codec` gave it (SQLite: text) as the naive UTC datetime stored."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value
