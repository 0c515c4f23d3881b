"""Residents' transparency records (node.transparency.ExchangeRecorder): who is recorded for which
released result, newest first, in pages; data in the node's database or elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from domain.errors import InvalidArgument
from infra import storage
from keys import timefmt
from node import transparency
from node.consent import page_token
from node.numbers import numbers_of
from node.transparency import Exchange, ExchangeRecorder

NOW = timefmt.now()
people = sa.Table(
    "people",
    sa.MetaData(),
    sa.Column("resident_id", sa.String(128)),
    sa.Column("district", sa.String(64)),
)
RESIDENTS = {f"r{i:02d}": ("north" if i % 2 else "south") for i in range(12)}


def engine_for(url: str) -> sa.Engine:
    e = storage.create_engine(url)
    storage.upgrade(e)
    people.create(e, checkfirst=True)
    with e.begin() as conn:
        conn.execute(
            people.insert(), [{"resident_id": r, "district": d} for r, d in RESIDENTS.items()]
        )
    return e


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def node_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'node.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    e = engine_for(url)
    yield e
    e.dispose()


@pytest.fixture
def data_elsewhere(tmp_path: Path) -> Iterator[sa.Engine]:
    e = engine_for(f"sqlite:///{tmp_path / 'warehouse.db'}")
    yield e
    e.dispose()


def exchange(request_id: str, seconds: int = 0, **changes: object) -> Exchange:
    fields: dict[str, object] = {
        "request_id": request_id,
        "partner": "northwind-mobility",
        "purpose": "urban-mobility-planning",
        "dataset": "mobility",
        "agreement_id": "aurora--northwind-mobility",
        "agreement_version": 1,
        "released_at": NOW + timedelta(seconds=seconds),
        "log_index": seconds + 100,
    }
    fields.update(changes)
    return Exchange(**fields)  # type: ignore[arg-type]


def in_district(district: str) -> sa.Select[tuple[str]]:
    return sa.select(people.c.resident_id).where(people.c.district == district).distinct()


def walk(recorder: ExchangeRecorder, resident: str, size: int) -> tuple[list[str], int]:
    seen, token, pages = [], "", 0
    while True:
        items, token = recorder.for_resident(resident, size, token)
        pages += 1
        assert len(items) <= size
        seen += [e.request_id for e in items]
        if not token:
            return seen, pages


def test_only_contributors_are_recorded(node_engine: sa.Engine) -> None:
    recorder = ExchangeRecorder(node_engine, node_engine)
    recorder.record(exchange("q1", 1), in_district("north"))
    recorder.record(
        exchange("q2", 2, purpose="scientific-research", agreement_version=2, log_index=7),
        in_district("south"),
    )
    north, south = "r01", "r02"
    items, token = recorder.for_resident(north, 10, "")
    assert (items, token) == ([exchange("q1", 1)], "")
    [got] = recorder.for_resident(south, 10, "")[0]
    assert got == exchange("q2", 2, purpose="scientific-research", agreement_version=2, log_index=7)
    assert recorder.for_resident("nobody", 10, "") == ([], "")


def test_newest_first_in_pages(node_engine: sa.Engine) -> None:
    recorder = ExchangeRecorder(node_engine, node_engine)
    # (request id, second released, node log index). Timestamps have second precision: releases
    # in the same second are ordered by the node's log, whatever their (random) request ids.
    released = [
        ("a", 0, 10),
        ("g", 3, 11),
        ("c", 5, 12),
        ("b", 5, 13),
        ("e", 9, 14),
        ("d", 9, 15),
        ("f", 12, 16),
    ]
    for rid, seconds, index in released:
        recorder.record(exchange(rid, seconds, log_index=index), in_district("north"))
    expected = ["f", "d", "e", "b", "c", "g", "a"]
    for size in (1, 2, 3, 7, 100):
        seen, pages = walk(recorder, "r03", size)
        assert seen == expected, size
        assert pages == max(1, -(-len(expected) // size)), size
    assert walk(recorder, "r04", 2) == ([], 1)


def test_bad_page_tokens(node_engine: sa.Engine) -> None:
    recorder = ExchangeRecorder(node_engine, node_engine)
    recorder.record(exchange("q1"), in_district("north"))
    when = timefmt.fmt(NOW)
    for bad in (
        page_token("only-one-part"),
        page_token("yesterday", "5"),
        page_token(when, "q1"),
        page_token(when, "-1"),
        page_token(when, str(2**64)),
        page_token(when, "1", "extra"),
    ):
        with pytest.raises(InvalidArgument) as e:
            recorder.for_resident("r01", 1, bad)
        assert e.value.reason == "PAGE_TOKEN_INVALID"


def test_data_in_another_database_is_streamed_across(
    node_engine: sa.Engine, data_elsewhere: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transparency, "_CHUNK", 2)  # several chunks from a few residents
    recorder = ExchangeRecorder(node_engine, data_elsewhere)
    recorder.record(exchange("q1", 1), in_district("north"))
    north = [r for r, d in RESIDENTS.items() if d == "north"]
    for r in north:
        assert [e.request_id for e in recorder.for_resident(r, 10, "")[0]] == ["q1"]
    assert recorder.for_resident("r00", 10, "") == ([], "")


def test_a_release_with_no_contributors_is_still_an_exchange(node_engine: sa.Engine) -> None:
    recorder = ExchangeRecorder(node_engine, node_engine)
    recorder.record(exchange("q1"), in_district("nowhere"))
    assert all(recorder.for_resident(r, 10, "") == ([], "") for r in RESIDENTS)
    with node_engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(transparency.exchanges))
        assert n.scalar_one() == 1


def test_bitmaps_span_blocks_and_a_page_spans_reads(
    node_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transparency, "_SCAN", 2)  # a page is found over several reads
    with node_engine.begin() as conn:
        # Numbers taken before: the residents' numbers straddle the first block's end.
        numbers_of(conn, [f"earlier-{i}" for i in range((1 << transparency.BLOCK_BITS) - 6)])
    recorder = ExchangeRecorder(node_engine, node_engine)
    for i in range(6):
        # North in every exchange, south in every third.
        recorder.record(exchange(f"n{i}", i), in_district("north"))
        if i % 3 == 0:
            recorder.record(exchange(f"s{i}", i, log_index=1000 + i), in_district("south"))
    with node_engine.connect() as conn:
        numbers = conn.execute(
            sa.select(transparency.resident_numbers.c.number).where(
                transparency.resident_numbers.c.resident_id.in_(list(RESIDENTS))
            )
        ).scalars()
        assert {n >> transparency.BLOCK_BITS for n in numbers} == {0, 1}
    for resident, district in RESIDENTS.items():
        expected = ["n5", "n4", "n3", "n2", "n1", "n0"] if district == "north" else ["s3", "s0"]
        assert walk(recorder, resident, 4)[0] == expected, resident
