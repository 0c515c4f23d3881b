"""Migration 0014 (log commitments): its tables and columns come and go; entries logged before it
keep their bytes; and going back below it is refused while openings only it keeps exist, as the
statements behind the log's commitments would be lost. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.kinds import LogKind
from infra import storage
from keys import timefmt
from keys.ed25519 import Signer
from node.consent import ConsentRecord, ConsentRegistry

KEY = Signer.generate()
NEW_TABLES = {"log_openings", "log_erasures", "resident_erasures"}


@pytest.fixture
def engine(node_database_url: str) -> Iterator[sa.Engine]:
    e = storage.create_engine(node_database_url)
    yield e
    e.dispose()


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_old_entries_stay_and_downgrade_refuses_to_lose_openings(engine: sa.Engine) -> None:
    storage.upgrade(engine, "0013")
    assert not NEW_TABLES & _tables(engine)
    with MerkleLog(engine, "citybroker/node/aurora", KEY) as log:
        old = log.append(b'{"a whole receipt logged before 0014": 1}', kind=LogKind.CONSENT)
    storage.upgrade(engine)
    assert _tables(engine) >= NEW_TABLES
    columns = {c["name"] for c in sa.inspect(engine).get_columns("consent_events")}
    assert "salt" in columns
    with MerkleLog(engine, "citybroker/node/aurora", KEY) as log:
        assert log.entries(old, old + 1) == [b'{"a whole receipt logged before 0014": 1}']
        storage.downgrade(engine, "0013")  # nothing committed since: reversible
        assert not NEW_TABLES & _tables(engine)
        storage.upgrade(engine)
        now = timefmt.now()
        ConsentRegistry(engine, "aurora", KEY, log).give(
            ConsentRecord("r-1", "res-1", ("urban-mobility-planning",), ("p",), ("mobility",), now),
            actor="portal",
        )
    with pytest.raises(RuntimeError, match="cannot downgrade below 0014"):
        storage.downgrade(engine, "0013")
    assert _tables(engine) >= NEW_TABLES
