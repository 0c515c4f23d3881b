"""The consent registry: lifecycle errors, and signed receipts the city's key verifies."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain import commitment
from domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from domain.kinds import LogKind
from infra import storage
from keys import dsse, timefmt
from keys.ed25519 import PublicKey, Signer
from keys.errors import SignatureError
from node import consent
from node.consent import ConsentRecord, ConsentRegistry
from node.schema import consent_events, log_openings

CITY_KEY = Signer.generate()
NOW = timefmt.now()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ConsentRegistry]:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    with MerkleLog(engine, "citybroker/node/aurora", CITY_KEY) as log:
        yield ConsentRegistry(engine, "aurora", CITY_KEY, log)
    engine.dispose()


def record(**changes: Any) -> ConsentRecord:
    r = ConsentRecord(
        record_id="rec-1",
        resident_id="aurora-r000001",
        purposes=("urban-mobility-planning",),
        recipients=("northwind",),
        data_categories=("mobility",),
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=30),
    )
    return dataclasses.replace(r, **changes)


def city_lookup(kid: str) -> PublicKey | None:
    return CITY_KEY.public if kid == CITY_KEY.keyid else None


def verify_receipt(receipt: bytes) -> dict[str, object]:
    payload, _ = dsse.verify(dsse.Envelope.from_json(receipt), consent.RECEIPT, city_lookup)
    return payload


def events(registry: ConsentRegistry, record_id: str) -> list[str]:
    engine: sa.Engine = registry._engine
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(consent_events.c.event)
            .where(consent_events.c.record_id == record_id)
            .order_by(consent_events.c.event_id)
        )
        return [r[0] for r in rows]


def test_give_stores_the_record_and_returns_a_signed_receipt(registry: ConsentRegistry) -> None:
    receipt = registry.give(record(), actor="portal")
    payload = verify_receipt(receipt)
    assert payload["city"] == "aurora"
    assert payload["record_id"] == "rec-1"
    assert payload["event"] == "given"
    assert payload["actor"] == "portal"
    assert payload["valid_until"] == timefmt.fmt(NOW + timedelta(days=30))
    stored = registry.get("rec-1")
    assert stored == record()
    assert events(registry, "rec-1") == ["given"]


def test_receipt_does_not_verify_with_another_key(registry: ConsentRegistry) -> None:
    env = dsse.Envelope.from_json(registry.give(record(), actor="portal"))
    other = Signer.generate()
    with pytest.raises(SignatureError):
        dsse.verify(env, consent.RECEIPT, lambda kid: other.public if kid == other.keyid else None)


def test_give_twice_with_the_same_id(registry: ConsentRegistry) -> None:
    first = registry.give(record(), actor="portal")
    assert registry.give(record(), actor="portal") == first  # same terms: idempotent
    with pytest.raises(AlreadyExists) as e:
        registry.give(record(resident_id="aurora-r000002"), actor="portal")
    assert e.value.reason == "CONSENT_RECORD_CONFLICT"
    assert registry.get("rec-1").resident_id == "aurora-r000001"
    assert events(registry, "rec-1") == ["given"]


def test_withdraw_unknown(registry: ConsentRegistry) -> None:
    with pytest.raises(NotFound) as e:
        registry.withdraw("nope", actor="resident")
    assert e.value.reason == "CONSENT_NOT_FOUND"


def test_withdraw_then_withdraw_again(registry: ConsentRegistry) -> None:
    registry.give(record(), actor="portal")
    payload = verify_receipt(registry.withdraw("rec-1", actor="resident"))
    assert (payload["event"], payload["actor"]) == ("withdrawn", "resident")
    assert registry.get("rec-1").state == "withdrawn"

    with pytest.raises(FailedPrecondition) as e:
        registry.withdraw("rec-1", actor="resident")
    assert e.value.reason == "CONSENT_NOT_ACTIVE"
    assert events(registry, "rec-1") == ["given", "withdrawn"]


def test_unknown_purpose(registry: ConsentRegistry) -> None:
    with pytest.raises(InvalidArgument) as e:
        registry.give(record(purposes=("selling-data",)), actor="portal")
    assert e.value.reason == "PURPOSE_UNKNOWN"


@pytest.mark.parametrize("until", [NOW - timedelta(days=1), NOW - timedelta(days=2)])
def test_dates_in_the_wrong_order(registry: ConsentRegistry, until: object) -> None:
    with pytest.raises(InvalidArgument) as e:
        registry.give(record(valid_until=until), actor="portal")
    assert e.value.reason == "CONSENT_DATES_INVALID"
    with pytest.raises(NotFound):
        registry.get("rec-1")


@pytest.mark.parametrize("field", ["record_id", "resident_id", "recipients", "data_categories"])
@pytest.mark.parametrize("value", ["", "x" * (consent.MAX_ID_CHARS + 1)])
def test_identifier_fields_are_bounded(registry: ConsentRegistry, field: str, value: str) -> None:
    bad = (value,) if field in ("recipients", "data_categories") else value
    with pytest.raises(InvalidArgument) as e:
        registry.give(record(**{field: bad}), actor="portal")
    assert e.value.reason == "CONSENT_FIELD_INVALID"
    assert e.value.metadata == {"field": field}


def test_open_ended_consent(registry: ConsentRegistry) -> None:
    verify_receipt(registry.give(record(valid_until=None), actor="portal"))
    assert registry.get("rec-1").valid_until is None


def test_every_consent_event_given_through_the_registry_is_in_the_log(tmp_path: Path) -> None:
    """Each receipt is in the log as a salted commitment the city alone can open: the entry
    names no resident, and the opening kept in log_openings (receipt and salt) opens it."""
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    with MerkleLog(engine, "citybroker/node/aurora", CITY_KEY) as log:
        registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
        given = registry.give(record(), actor="portal")
        withdrawn = registry.withdraw("rec-1", actor="resident")
        logged = log.records(0, log.size())
    with engine.connect() as conn:
        kept = conn.execute(sa.select(log_openings).order_by(log_openings.c.log_index)).all()
    assert [r.kind for r in logged] == [LogKind.CONSENT, LogKind.CONSENT]
    assert [bytes(k.statement) for k in kept] == [given, withdrawn]
    for entry, k in zip(logged, kept, strict=True):
        assert k.log_index == entry.index and k.resident_id == "aurora-r000001"
        env = dsse.Envelope.from_json(entry.entry)
        assert b"aurora-r000001" not in entry.entry and b"aurora-r000001" not in env.payload
        claims, _ = dsse.verify(env, "commitment", lambda keyid: CITY_KEY.public)
        opening = commitment.Opening(k.log_index, bytes(k.statement), bytes(k.salt))
        assert commitment.opening_problem(claims, opening) is None
        wrong = commitment.Opening(k.log_index, bytes(k.statement), bytes(32))
        assert commitment.opening_problem(claims, wrong) is not None
    engine.dispose()
