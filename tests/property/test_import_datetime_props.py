"""The consent import writes datetimes to SQLite as text itself; it must be exactly the text
SQLAlchemy's SQLite DATETIME type writes, or the API's reads and comparisons would disagree."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from node.consent_import.codec import sqlite_datetime

_dialect = sqlite.dialect()
_sqlalchemy = sa.DateTime().dialect_impl(_dialect).bind_processor(_dialect)


@given(st.datetimes() | st.datetimes(timezones=st.just(UTC)) | st.none())
def test_same_text_as_sqlalchemy(value: datetime | None) -> None:
    assert _sqlalchemy is not None
    assert sqlite_datetime(value) == _sqlalchemy(value)
