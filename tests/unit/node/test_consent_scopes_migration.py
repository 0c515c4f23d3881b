"""Migration 0010: on SQLite consent_scopes becomes a WITHOUT ROWID table and back on downgrade,
keeping every scope row; on PostgreSQL it changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from infra import storage
from keys import timefmt
from keys.ed25519 import Signer
from node.consent import ConsentRecord, ConsentRegistry
from node.schema import consent_scopes
from tests.unit.node.consent_import.support import export_openings

CITY_KEY = Signer.generate()
NOW = timefmt.now()


@pytest.fixture
def engine(node_database_url: str) -> Iterator[sa.Engine]:
    e = storage.create_engine(node_database_url)
    yield e
    e.dispose()


def scope_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(consent_scopes).order_by(*consent_scopes.primary_key)))


def check_storage(engine: sa.Engine, without_rowid: bool) -> None:
    """On SQLite, that consent_scopes is (or is not) a WITHOUT ROWID table."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        sql = conn.exec_driver_sql(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'consent_scopes'"
        ).scalar_one()
    assert ("WITHOUT ROWID" in sql) == without_rowid


def test_scopes_survive_the_rebuild_both_ways(engine: sa.Engine) -> None:
    storage.upgrade(engine)
    with MerkleLog(engine, "citybroker/node/aurora", CITY_KEY) as log:
        registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
        for i in range(3):
            registry.give(
                ConsentRecord(
                    record_id=f"rec-{i}",
                    resident_id=f"aurora-r{i:06d}",
                    purposes=("urban-mobility-planning", "scientific-research")[: i % 2 + 1],
                    recipients=("northwind",),
                    data_categories=("mobility", "location")[: i + 1 if i < 2 else 2],
                    valid_from=NOW - timedelta(days=1),
                    valid_until=NOW + timedelta(days=30) if i else None,
                ),
                actor="portal",
            )
        registry.withdraw("rec-1", actor="resident")
        before = scope_rows(engine)
        assert len(before) == 1 + 4 + 2
        check_storage(engine, without_rowid=True)

        export_openings(engine)
        storage.downgrade(engine, "0009")
        assert scope_rows(engine) == before
        check_storage(engine, without_rowid=False)

        storage.upgrade(engine)
        assert scope_rows(engine) == before
        check_storage(engine, without_rowid=True)
        # The registry reads the rebuilt table as before.
        assert ConsentRegistry(engine, "aurora", CITY_KEY, log).get("rec-2").data_categories == (
            "location",
            "mobility",
        )
