"""LogService on a node whose log began before consent evidence became salted commitments: a
consent receipt logged whole is withheld from other parties (its leaf hash still lets them check
the tree), and served to the city's own operators; commitments and other entries are served to
everyone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.log import MerkleLog
from audit.merkle import leaf_hash, root_from_leaf_hashes
from citybroker.audit.v1 import audit_pb2
from domain.kinds import LogKind
from edge.log_service import LogServicer
from edge.rpc import CALLER
from infra import storage
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node.consent import ConsentRecord, ConsentRegistry

KEY = Signer.generate()
OPERATOR = "aurora.operator"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[MerkleLog]:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    with MerkleLog(engine, "citybroker/node/aurora", KEY) as log:
        # A receipt logged whole, as nodes did before migration 0014, then a new one.
        legacy = dsse.sign("consent-receipt", {"city": "aurora", "resident_id": "res-old"}, KEY)
        log.append(legacy.to_json(), kind=LogKind.CONSENT)
        ConsentRegistry(engine, "aurora", KEY, log).give(
            ConsentRecord("r-1", "res-new", ("urban-mobility-planning",), ("p",), ("mobility",),
                          timefmt.now()),
            actor="portal",
        )  # fmt: skip
        yield log
    engine.dispose()


def _list(servicer: LogServicer, caller: str) -> list[audit_pb2.LogEntry]:
    token = CALLER.set(caller)
    try:
        request = audit_pb2.ListEntriesRequest(page_size=10)
        return list(servicer.ListEntries(request, None).entries)  # type: ignore[arg-type]
    finally:
        CALLER.reset(token)


def test_a_legacy_receipt_is_withheld_from_other_parties_only(log: MerkleLog) -> None:
    servicer = LogServicer(log, lambda: [OPERATOR])
    other = _list(servicer, "borealis")
    assert other[0].withheld and other[0].entry == b""
    assert other[0].leaf_hash == leaf_hash(log.entries(0, 1)[0])
    assert not other[1].withheld and b"res-new" not in other[1].entry  # a commitment
    hashes = [e.leaf_hash if e.withheld else leaf_hash(e.entry) for e in other]
    assert root_from_leaf_hashes(hashes) == log.root()
    own = _list(servicer, OPERATOR)
    assert not own[0].withheld and b"res-old" in dsse.Envelope.from_json(own[0].entry).payload
    # A broker's log (no own readers) withholds nothing.
    assert not _list(LogServicer(log), "borealis")[0].withheld
