"""Migration 0008: the per-resident transparency rows of a node that ran before it become resident
numbers and bitmaps that answer the same, and back on downgrade; SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from infra import storage
from keys import timefmt
from node.transparency import BLOCK_BITS, ExchangeRecorder

NOW = timefmt.to_db(timefmt.now())
# Enough residents for several bitmap blocks.
RESIDENTS = [f"r{i:05d}" for i in range(3 * (1 << BLOCK_BITS) + 5)]
OLD = sa.table("exchange_residents", sa.column("resident_id"), sa.column("request_id"))
EXCHANGES = sa.table(
    "exchanges",
    *(
        sa.column(c)
        for c in (
            "request_id",
            "partner",
            "purpose",
            "dataset",
            "agreement_id",
            "agreement_version",
            "released_at",
            "log_index",
        )
    ),
)


@pytest.fixture
def engine(node_database_url: str) -> Iterator[sa.Engine]:
    e = storage.create_engine(node_database_url)
    yield e
    e.dispose()


def old_rows() -> dict[str, set[str]]:
    """Per exchange, its residents: every other one, every third one, and a single one."""
    return {
        "q1": set(RESIDENTS[::2]),
        "q2": set(RESIDENTS[::3]),
        "q3": {RESIDENTS[-1]},
    }


def test_upgrade_keeps_what_each_resident_sees_and_downgrade_restores_the_rows(
    engine: sa.Engine,
) -> None:
    storage.upgrade(engine, "0007")
    rows = old_rows()
    with engine.begin() as conn:
        for i, request_id in enumerate(rows):
            conn.execute(
                EXCHANGES.insert().values(
                    request_id=request_id,
                    partner="northwind",
                    purpose="urban-mobility-planning",
                    dataset="mobility",
                    agreement_id="a",
                    agreement_version=1,
                    released_at=NOW + timedelta(seconds=i),
                    log_index=i,
                )
            )
            conn.execute(
                OLD.insert(),
                [{"resident_id": r, "request_id": request_id} for r in rows[request_id]],
            )
    storage.upgrade(engine)
    recorder = ExchangeRecorder(engine, engine)
    for resident in (RESIDENTS[0], RESIDENTS[3], RESIDENTS[5], RESIDENTS[-1], "nobody"):
        expected = [q for q in ("q3", "q2", "q1") if resident in rows[q]]
        assert [e.request_id for e in recorder.for_resident(resident, 10, "")[0]] == expected
    storage.downgrade(engine, "0007")
    with engine.connect() as conn:
        back = conn.execute(sa.select(OLD.c.request_id, OLD.c.resident_id)).all()
    assert {(q, r) for q, r in back} == {(q, r) for q, rs in rows.items() for r in rs}
