"""Contributors computed in the aggregate's own scan (node.aggregate.QueryCompiler.run: DuckDB
data, consents mirrored): the released cells' residents, exactly those the contributors statement
(a second scan) finds, recorded alike; and the second scan whenever the one scan cannot be used."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.query import Dimension, Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, synthetic, transparency
from node.catalogue import Catalogue
from node.consent import ConsentRegistry
from node.schema import exchange_contributors
from node.transparency import Exchange, ExchangeRecorder, words_statement
from tests.conftest import give_mobility_consents

CITY, PARTNER, PURPOSE = "aurora", "northwind", "urban-mobility-planning"
DATASET = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"))
).datasets["mobility"]
QUERY = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RESIDENTS), Measure(MeasureKind.COUNT_RECORDS)),
    group_by=(Dimension("district"), Dimension("mode")),
)
PEOPLE = synthetic.residents(CITY, ("North", "South", "East"), 40, seed=7)


# Cell counts (and one scan's failures) are learnt per query shape by the node's compiler.
COMPILER = aggregate.QueryCompiler()


@pytest.fixture(autouse=True)
def no_cell_counts() -> None:
    """Every test starts with a compiler that has learnt nothing."""
    global COMPILER
    COMPILER = aggregate.QueryCompiler()


@pytest.fixture
def split(tmp_path: Path) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    consents = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(consents)
    data = storage.create_engine(f"duckdb:///{tmp_path / 'data.duckdb'}")
    synthetic.create_tables(data)
    synthetic.load_trips(data, synthetic.trip_rows(PEOPLE, 3, date(2026, 8, 1), 30, seed=7))
    signer = Signer.generate()
    with MerkleLog(consents, f"citybroker/node/{CITY}", signer) as log:
        registry = ConsentRegistry(consents, CITY, signer, log)
        now = timefmt.now()
        give_mobility_consents(registry, PEOPLE[:30], PARTNER, now)
    yield consents, data
    data.dispose()
    consents.dispose()


def numbers(bitmap: bytes) -> set[int]:
    return {n for n in range(8 * len(bitmap)) if bitmap[n >> 3] >> (n & 7) & 1}


def statement(
    result: aggregate.AggregateResult, at: datetime
) -> tuple[sa.Select[Any], dict[str, Any]]:
    """The contributors statement (the second scan) for the released cells of `result`."""
    stmt = COMPILER.contributors_statement(
        aggregate.Scan(QUERY, DATASET, (PARTNER,), at, pushed=True), "duckdb", result.withheld
    )
    assert stmt is not None
    return stmt


def second_scan(conn: sa.Connection, result: aggregate.AggregateResult, at: datetime) -> set[int]:
    """The released cells' contributors as the contributors statement finds them."""
    stmt = statement(result, at)
    mirrored = aggregate.mirrored_numbers(conn)
    assert mirrored is not None
    found: set[int] = set()
    for unnumbered, word, bits in conn.execute(words_statement(stmt[0], mirrored), stmt[1]):
        assert unnumbered is None
        found |= {32 * word + b for b in range(32) if bits >> b & 1}
    return found


def answer(
    conn: sa.Connection, consents: sa.Engine, k: int, per_resident: int = 0
) -> tuple[aggregate.AggregateResult, datetime]:
    at = timefmt.now()
    aggregate.push_consenting(conn, consents, PURPOSE, (PARTNER,), "mobility", at)
    scan = aggregate.Scan(QUERY, DATASET, (PARTNER,), at, pushed=True, per_resident=per_resident)
    return COMPILER.run(conn, scan, k), at


@pytest.mark.parametrize("k", [1, 3, 5])
def test_one_scan_finds_the_released_cells_contributors(
    split: tuple[sa.Engine, sa.Engine], k: int
) -> None:
    consents, data = split
    with data.connect() as conn:
        first, _ = answer(conn, consents, k)  # learns the cell count: two scans
        assert first.contributor_bitmap is None
        again, at = answer(conn, consents, k)
        assert again.contributor_bitmap is not None
        assert (again.cells, again.withheld) == (first.cells, first.withheld)
        assert numbers(again.contributor_bitmap) == second_scan(conn, again, at)
        if k == 5:
            assert again.withheld, "no cell withheld: the test would not test withholding"


def exchange(request_id: str) -> Exchange:
    return Exchange(request_id, PARTNER, PURPOSE, "mobility", "a", 1, timefmt.now(), 0)


def test_records_the_same_rows_as_the_second_scan(split: tuple[sa.Engine, sa.Engine]) -> None:
    consents, data = split
    ec = exchange_contributors.c
    recorder = ExchangeRecorder(consents, data)
    with data.connect() as conn:
        answer(conn, consents, 3)
        result, at = answer(conn, consents, 3)
        stmt, params = statement(result, at)
        assert result.contributor_bitmap is not None
        writes = [
            recorder.side_write(exchange("two-scans"), stmt, conn, 0, params),
            recorder.side_write(
                exchange("one-scan"), None, conn, 0, contributor_bitmap=result.contributor_bitmap
            ),
        ]
        written = []
        for i, write in enumerate(writes):
            with consents.begin() as target:
                write(target, i)
                written.append(
                    target.execute(
                        sa.select(ec.block, ec.bits)
                        .where(ec.request_id == ["two-scans", "one-scan"][i])
                        .order_by(ec.block)
                    ).all()
                )
    assert written[0] and written[0] == written[1]


def test_second_scan_for_an_unnumbered_contributor_and_under_dp(
    split: tuple[sa.Engine, sa.Engine],
) -> None:
    consents, data = split
    with data.connect() as conn:
        before, _ = answer(conn, consents, 1)
        # As when a consent arrives between numbering and mirroring: a row with no number.
        conn.execute(
            sa.text("UPDATE citybroker_consenting SET number = NULL WHERE resident_id = :r"),
            {"r": PEOPLE[0].resident_id},
        )
        conn.commit()
        result, _ = answer(conn, consents, 1)
        assert result.contributor_bitmap is None
        # The resident is still counted (by id, beside the numbered ones counted from bits).
        assert result.cells == before.cells
        answer(conn, consents, 1, per_resident=2)
        dp, _ = answer(conn, consents, 1, per_resident=2)
        assert dp.contributor_bitmap is None


def test_second_scan_when_the_cells_bitmaps_would_not_fit(
    split: tuple[sa.Engine, sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    consents, data = split
    with data.connect() as conn:
        first, _ = answer(conn, consents, 1)
        monkeypatch.setattr(
            aggregate, "_MAX_CELL_BITMAPS", len(first.cells) - 1
        )  # under a byte a cell
        again, _ = answer(conn, consents, 1)
        assert again.contributor_bitmap is None


def test_a_bitmap_records_as_its_numbers_do() -> None:
    """Blocks from a bitmap (node.transparency._Bitmap.add_bitmap) equal those from numbers,
    across blocks, with empty blocks left out and a partial last block."""
    chosen = {0, 7, 8, 8191, 8192, 3 * 8192 + 5, 5 * 8192 + 1000}
    size = 5 * 8192 + 1001
    raw = bytearray((size + 7) // 8)
    for n in chosen:
        raw[n >> 3] |= 1 << (n & 7)
    from_bitmap, from_numbers = transparency._Bitmap(), transparency._Bitmap()
    from_bitmap.add_bitmap(bytes(raw))
    from_bitmap.add([1])  # and numbered later, by id
    from_numbers.add([*chosen, 1])
    assert from_bitmap.rows("r") == from_numbers.rows("r")
    assert [r["block"] for r in from_bitmap.rows("r")] == [0, 1, 3, 5]


def test_two_scans_from_then_on_when_one_scan_runs_out_of_memory(
    split: tuple[sa.Engine, sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    consents, data = split
    with data.connect() as conn:
        first, _ = answer(conn, consents, 3)
        # A bitmap too short for the numbers makes DuckDB refuse the one scan; taken as an
        # Out of Memory Error here.
        tried = []

        def too_short(conn: sa.Connection) -> int:
            tried.append(1)
            return 8

        monkeypatch.setattr(aggregate, "_bitmap_bits", too_short)
        monkeypatch.setattr(aggregate, "_out_of_memory", lambda error: True)
        again, _ = answer(conn, consents, 3)
        assert again.contributor_bitmap is None
        assert (again.cells, again.withheld) == (first.cells, first.withheld)
        answer(conn, consents, 3)
        assert tried == [1]  # not tried again
