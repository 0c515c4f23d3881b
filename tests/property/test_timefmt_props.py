"""keys.timefmt.fmt, formatted by hand, against strftime: the signed bytes must not move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from keys import timefmt

zones = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60)
)


@given(st.datetimes(timezones=st.just(UTC) | zones))
def test_fmt_is_strftime(t: datetime) -> None:
    try:
        utc = t.astimezone(UTC)
    except OverflowError:
        return  # out of datetime's range once moved to UTC: neither can format it
    assert timefmt.fmt(t) == utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_fmt_keeps_strftimes_unpadded_early_years() -> None:
    assert timefmt.fmt(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)) == "999-01-02T03:04:05Z"
    assert timefmt.fmt(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2025-01-02T03:04:05Z"
