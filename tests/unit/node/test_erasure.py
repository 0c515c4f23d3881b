"""Erasing a resident (node.erasure): all of their consent, openings, salts and transparency link
go in one transaction, the log is untouched and still verifies, what was erased is recorded
without naming them, an unknown resident changes nothing, and the consent mirror of data kept
elsewhere forgets them before the next query."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from audit.merkle import leaf_hash, verify_inclusion
from domain.errors import NotFound
from infra import storage
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, erasure, synthetic
from node.consent import ConsentRecord, ConsentRegistry
from node.consent_evidence import ConsentEvidence
from node.log_openings import LogOpenings
from node.numbers import numbers_of
from node.schema import (
    consent_events,
    consent_records,
    consent_scopes,
    log_erasures,
    log_openings,
    resident_erasures,
    resident_numbers,
)
from tests.unit.node.test_consent_mirror import DATASET, PARTNER, PEOPLE, RESIDENTS, give

CITY = "aurora"
KEY = Signer.generate()


@dataclass
class Node:
    engine: sa.Engine
    log: MerkleLog
    registry: ConsentRegistry


@pytest.fixture
def node(node_database_url: str) -> Iterator[Node]:
    """A node's database on SQLite and, for real, PostgreSQL."""
    engine = storage.create_engine(node_database_url)
    storage.upgrade(engine)
    with MerkleLog(engine, f"citybroker/node/{CITY}", KEY) as log:
        yield Node(engine, log, ConsentRegistry(engine, CITY, KEY, log))
    engine.dispose()


def _record(record_id: str, resident: str) -> ConsentRecord:
    now = timefmt.now()
    return ConsentRecord(
        record_id, resident, ("urban-mobility-planning",), (PARTNER,), ("mobility",),
        now - timedelta(days=1),
    )  # fmt: skip


def _count(engine: sa.Engine, table: sa.Table, **where: str) -> int:
    stmt = sa.select(sa.func.count()).select_from(table)
    for column, value in where.items():
        stmt = stmt.where(table.c[column] == value)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def test_erasure_removes_the_resident_and_leaves_the_log(node: Node) -> None:
    reg = node.registry
    reg.give(_record("a-1", "res-a"), actor="portal")
    reg.withdraw("a-1", actor="resident")
    reg.give(_record("a-2", "res-a"), actor="portal")
    reg.give(_record("b-1", "res-b"), actor="portal")
    with node.engine.begin() as conn:
        numbers_of(conn, ["res-a", "res-b"])
    size, root = node.log.size(), node.log.root()

    done = erasure.erase_resident(node.engine, "res-a")

    assert done == erasure.Erasure(records=2, events=3, statements=3, batch_members=0)
    for table in (consent_records, consent_scopes, log_openings):
        assert _count(node.engine, table, resident_id="res-a") == 0
    assert _count(node.engine, consent_events) == 1  # res-b's
    assert _count(node.engine, log_openings, resident_id="res-b") == 1
    assert _count(node.engine, log_erasures) == 3 and _count(node.engine, resident_erasures) == 1
    with node.engine.connect() as conn:
        ids = set(conn.execute(sa.select(resident_numbers.c.resident_id)).scalars())
    # The number stays reserved, linked to no one.
    assert "res-a" not in ids and "res-b" in ids and len(ids) == 2
    assert any(i.startswith(erasure.TOMBSTONE) for i in ids)
    # The log is untouched: same size, same root, every proof still good.
    assert (node.log.size(), node.log.root()) == (size, root)
    for index, entry in enumerate(node.log.entries(0, size)):
        verify_inclusion(index, size, leaf_hash(entry), node.log.inclusion_proof(index, size), root)
    # Nothing to open for the erased; the other resident's evidence is still proven.
    openings = LogOpenings(node.engine, node.log, reg)
    with pytest.raises(NotFound):
        openings.for_record("a-1")
    (kept,) = openings.for_record("b-1")
    leaf = leaf_hash(node.log.entries(kept.opening.index, kept.opening.index + 1)[0])
    verify_inclusion(kept.opening.index, kept.tree_size, leaf, kept.proof, root)


def test_an_unknown_resident_is_refused_and_nothing_changes(node: Node) -> None:
    node.registry.give(_record("b-1", "res-b"), actor="portal")
    with pytest.raises(NotFound) as refused:
        erasure.erase_resident(node.engine, "nobody")
    assert refused.value.reason == "RESIDENT_UNKNOWN"
    assert _count(node.engine, resident_erasures) == 0
    assert _count(node.engine, log_erasures) == 0


def test_a_failure_midway_applies_nothing(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    node.registry.give(_record("a-1", "res-a"), actor="portal")

    def broken(*args: object) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(erasure, "_mark_erased", broken)
    with pytest.raises(RuntimeError):
        erasure.erase_resident(node.engine, "res-a")
    assert _count(node.engine, consent_records, resident_id="res-a") == 1
    assert _count(node.engine, log_openings, resident_id="res-a") == 1
    assert _count(node.engine, consent_events) == 1


def test_the_consent_mirror_forgets_an_erased_resident(node: Node, tmp_path: Path) -> None:
    data = storage.create_engine(f"sqlite:///{tmp_path / 'data.db'}")
    synthetic.create_tables(data)
    synthetic.load_trips(data, synthetic.trip_rows(PEOPLE, 3, date(2026, 8, 1), 30, seed=5))
    for p in PEOPLE[:11]:
        give(node.registry, p.resident_id)

    def count(conn: sa.Connection) -> int:
        at = timefmt.now()
        aggregate.push_consenting(conn, node.engine, RESIDENTS.purpose, (PARTNER,), "mobility", at)
        scan = aggregate.Scan(RESIDENTS, DATASET, (PARTNER,), at, pushed=True)
        cells = aggregate.QueryCompiler().run(conn, scan, k=1).cells
        return sum(int(c.values["count_residents"]) for c in cells)

    with data.connect() as conn:
        assert count(conn) == 11
        erasure.erase_resident(node.engine, PEOPLE[0].resident_id)
        # No consent event tells of an erasure: the mirror reloads on the erasure's counter.
        assert count(conn) == 10
    data.dispose()


def test_a_receipt_logged_after_its_resident_was_erased_keeps_no_opening(node: Node) -> None:
    """The event was stored, the resident erased, then its receipt reached the log: the log's
    transaction finds the record gone, so the commitment is erased from the start."""
    receipt = node.registry.give(_record("a-1", "res-a"), actor="portal")
    erasure.erase_resident(node.engine, "res-a")
    evidence = ConsentEvidence(CITY, KEY, node.log)
    evidence.log_receipt(receipt)
    assert _count(node.engine, log_openings, resident_id="res-a") == 0
    with node.engine.connect() as conn:
        erased = set(conn.execute(sa.select(log_erasures.c.log_index)).scalars())
    assert node.log.size() - 1 in erased
