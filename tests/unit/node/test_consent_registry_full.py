"""The consent registry on SQLite and PostgreSQL: every ISO/IEC TS 27560 field round-trips, every bad
input is a clear error with nothing partly applied, listing paginates, and the history holds one
receipt per event that the city's key verifies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.errors import (
    AlreadyExists,
    CitybrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from infra import storage
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.errors import SignatureError
from node import consent
from node.consent import ConsentRecord, ConsentRegistry
from node.consent_lifecycle import State
from node.schema import consent_events, consent_records, consent_scopes

CITY_KEY = Signer.generate()
NOW = timefmt.now()
PARTNER = "northwind-mobility"
KNOWN_PARTIES = {PARTNER, "aurora", "borealis"}


@pytest.fixture
def engine(node_database_url: str) -> Iterator[sa.Engine]:
    e = storage.create_engine(node_database_url)
    storage.upgrade(e)
    yield e
    e.dispose()


@pytest.fixture
def log(engine: sa.Engine) -> Iterator[MerkleLog]:
    with MerkleLog(engine, "citybroker/node/aurora", CITY_KEY) as log:
        yield log


@pytest.fixture
def registry(engine: sa.Engine, log: MerkleLog) -> ConsentRegistry:
    return ConsentRegistry(engine, "aurora", CITY_KEY, log, known_party=KNOWN_PARTIES.__contains__)


def record(**changes: Any) -> ConsentRecord:
    r = ConsentRecord(
        record_id="rec-1",
        resident_id="aurora-r000001",
        purposes=("urban-mobility-planning",),
        recipients=(PARTNER,),
        data_categories=("mobility",),
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=30),
    )
    return dataclasses.replace(r, **changes)


def full_record() -> ConsentRecord:
    """Every field set, none at its default."""
    return ConsentRecord(
        record_id="rec-full",
        resident_id="aurora-r000042",
        purposes=("scientific-research", "urban-mobility-planning"),
        recipients=("category:public-transport-operator", "category:research-institution", PARTNER),
        data_categories=("age", "health", "mobility"),
        valid_from=NOW - timedelta(days=3),
        valid_until=NOW + timedelta(days=400),
        lawful_basis="explicit-consent",
        notice_url="https://aurora.example/privacy/mobility?v=3",
        notice_hash="sha256:" + "ab" * 32,
        language="fi-FI",
        jurisdiction="EU-FI",
        retention_days=365,
        collection_method="web portal, strong authentication (Suomi.fi)",
        withdrawal_method="portal: Omat tiedot › Suostumukset",
        state=State.GIVEN,
    )


def city_lookup(kid: str) -> Any:
    return CITY_KEY.public if kid == CITY_KEY.keyid else None


def verified(receipt: bytes) -> dict[str, Any]:
    payload, keyids = dsse.verify(dsse.Envelope.from_json(receipt), consent.RECEIPT, city_lookup)
    assert keyids == {CITY_KEY.keyid}
    return payload


def rows(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (consent_records, consent_scopes, consent_events)
        )


# ---- round trips ---------------------------------------------------------------------------------


def test_every_field_round_trips_and_is_in_the_receipt(registry: ConsentRegistry) -> None:
    r = full_record()
    payload = verified(registry.give(r, actor="resident via portal"))
    stored = registry.get(r.record_id)
    assert stored == r
    for f in dataclasses.fields(ConsentRecord):
        assert getattr(stored, f.name) == getattr(r, f.name), f.name
    assert {k: payload[k] for k in r.terms()} == r.terms()
    assert payload["terms_digest"] == r.digest()
    assert (payload["city"], payload["event"], payload["state"]) == ("aurora", "given", "given")
    assert payload["actor"] == "resident via portal"
    # One scope row per (purpose, recipient, category).
    assert rows(registry._engine) == (1, 2 * 3 * 3, 1)


def test_values_at_the_column_limits_round_trip(registry: ConsentRegistry) -> None:
    r = full_record()
    r = dataclasses.replace(
        r,
        record_id="r" * consent.MAX_ID_CHARS,
        resident_id="p" * consent.MAX_ID_CHARS,
        notice_url="https://" + "u" * 500,
        language="en-" + "-".join(["abcdefgh"] * 3) + "-abcde",  # 35 characters
        jurisdiction="J" * 32,
        collection_method="c" * 64,
        withdrawal_method="w" * 64,
        retention_days=36_500,
    )
    assert len(r.language) == 35
    verified(registry.give(r, actor="portal"))
    assert registry.get(r.record_id) == r


def test_open_ended_consent_and_defaults_round_trip(registry: ConsentRegistry) -> None:
    r = record(valid_until=None)
    verified(registry.give(r, actor="portal"))
    assert registry.get("rec-1") == r


# ---- bad input -----------------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str, dict[str, str]]] = [
    (
        "unknown purpose",
        {"purposes": ("selling-data",)},
        "PURPOSE_UNKNOWN",
        {"purpose": "selling-data"},
    ),
    (
        "one unknown purpose among known",
        {"purposes": ("urban-mobility-planning", "astrology")},
        "PURPOSE_UNKNOWN",
        {"purpose": "astrology"},
    ),
    (
        "unknown category",
        {"data_categories": ("dna",)},
        "DATA_CATEGORY_UNKNOWN",
        {"category": "dna"},
    ),
    (
        "unknown recipient",
        {"recipients": ("nobody",)},
        "RECIPIENT_UNKNOWN",
        {"recipient": "nobody"},
    ),
    (
        "unknown recipient category",
        {"recipients": ("category:astrologers",)},
        "RECIPIENT_UNKNOWN",
        {"recipient": "category:astrologers"},
    ),
    ("bare category prefix", {"recipients": ("category:",)}, "RECIPIENT_UNKNOWN", {}),
    ("lawful basis", {"lawful_basis": "legitimate-interest"}, "LAWFUL_BASIS_UNKNOWN", {}),
    ("until == from", {"valid_until": NOW - timedelta(days=1)}, "CONSENT_DATES_INVALID", {}),
    ("until < from", {"valid_until": NOW - timedelta(days=9)}, "CONSENT_DATES_INVALID", {}),
    ("md5 hash", {"notice_hash": "md5:0123"}, "CONSENT_FIELD_INVALID", {"field": "notice_hash"}),
    (
        "upper-case hash",
        {"notice_hash": "sha256:" + "AB" * 32},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_hash"},
    ),
    (
        "short hash",
        {"notice_hash": "sha256:" + "ab" * 31},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_hash"},
    ),
    (
        "hash and newline",
        {"notice_hash": "sha256:" + "ab" * 32 + "\n"},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_hash"},
    ),
    (
        "ftp url",
        {"notice_url": "ftp://x.example/n"},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_url"},
    ),
    (
        "script url",
        {"notice_url": "javascript:alert(1)"},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_url"},
    ),
    (
        "url with space",
        {"notice_url": "https://a.example/x y"},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_url"},
    ),
    (
        "url and newline",
        {"notice_url": "https://a.example/\n"},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_url"},
    ),
    (
        "url too long",
        {"notice_url": "https://" + "u" * 501},
        "CONSENT_FIELD_INVALID",
        {"field": "notice_url"},
    ),
    ("language word", {"language": "english"}, "CONSENT_FIELD_INVALID", {"field": "language"}),
    ("language underscore", {"language": "en_GB"}, "CONSENT_FIELD_INVALID", {"field": "language"}),
    ("language empty", {"language": ""}, "CONSENT_FIELD_INVALID", {"field": "language"}),
    ("language newline", {"language": "en\n"}, "CONSENT_FIELD_INVALID", {"field": "language"}),
    (
        "language too long",
        {"language": "en" + "-abcdefgh" * 4},
        "CONSENT_FIELD_INVALID",
        {"field": "language"},
    ),
    (
        "jurisdiction too long",
        {"jurisdiction": "J" * 33},
        "CONSENT_FIELD_INVALID",
        {"field": "jurisdiction"},
    ),
    (
        "collection method too long",
        {"collection_method": "c" * 65},
        "CONSENT_FIELD_INVALID",
        {"field": "collection_method"},
    ),
    (
        "withdrawal method too long",
        {"withdrawal_method": "w" * 65},
        "CONSENT_FIELD_INVALID",
        {"field": "withdrawal_method"},
    ),
    (
        "negative retention",
        {"retention_days": -1},
        "CONSENT_FIELD_INVALID",
        {"field": "retention_days"},
    ),
    (
        "retention beyond a century",
        {"retention_days": 36_501},
        "CONSENT_FIELD_INVALID",
        {"field": "retention_days"},
    ),
    ("no purposes", {"purposes": ()}, "CONSENT_FIELD_INVALID", {"field": "purposes"}),
    (
        "purposes as a string",
        {"purposes": "urban-mobility-planning"},
        "CONSENT_FIELD_INVALID",
        {"field": "purposes"},
    ),
    ("no recipients", {"recipients": ()}, "CONSENT_FIELD_INVALID", {"field": "recipients"}),
    (
        "too many recipients",
        {"recipients": tuple(f"p{i}" for i in range(consent.MAX_SCOPE_ITEMS + 1))},
        "CONSENT_FIELD_INVALID",
        {"field": "recipients"},
    ),
    (
        "no categories",
        {"data_categories": ()},
        "CONSENT_FIELD_INVALID",
        {"field": "data_categories"},
    ),
    (
        "a purpose twice",
        {"purposes": ("urban-mobility-planning", "urban-mobility-planning")},
        "CONSENT_FIELD_INVALID",
        {"field": "purposes"},
    ),
    (
        "a recipient twice",
        {"recipients": (PARTNER, "aurora", PARTNER)},
        "CONSENT_FIELD_INVALID",
        {"field": "recipients"},
    ),
    (
        "a category twice",
        {"data_categories": ("mobility", "mobility")},
        "CONSENT_FIELD_INVALID",
        {"field": "data_categories"},
    ),
    ("empty record id", {"record_id": ""}, "CONSENT_FIELD_INVALID", {"field": "record_id"}),
    (
        "long resident id",
        {"resident_id": "x" * (consent.MAX_ID_CHARS + 1)},
        "CONSENT_FIELD_INVALID",
        {"field": "resident_id"},
    ),
]


@pytest.mark.parametrize("start", ["give", "refuse"])
def test_every_bad_input_is_a_clear_error_and_nothing_is_stored(
    registry: ConsentRegistry, start: str
) -> None:
    """One test walks the whole table (a fresh PostgreSQL database per case would be slow)."""
    call: Callable[[ConsentRecord, str], bytes] = getattr(registry, start)
    for name, changes, reason, metadata in BAD:
        with pytest.raises(InvalidArgument) as e:
            call(record(**changes), "portal")
        assert e.value.reason == reason, name
        assert metadata.items() <= e.value.metadata.items(), name
        assert e.value.message and "\n" not in e.value.message, name
        assert rows(registry._engine) == (0, 0, 0), name
        with pytest.raises(NotFound):
            registry.get(record(**changes).record_id or "rec-1")


def test_recipients_are_checked_only_against_a_known_party_lookup(
    engine: sa.Engine, log: MerkleLog
) -> None:
    open_registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    verified(open_registry.give(record(recipients=("anyone-at-all",)), "portal"))
    # Categories are always checked: they come from the shipped taxonomy.
    with pytest.raises(InvalidArgument) as e:
        open_registry.give(record(record_id="rec-2", recipients=("category:nope",)), "portal")
    assert e.value.reason == "RECIPIENT_UNKNOWN"


@pytest.mark.parametrize("method", ["withdraw", "revoke", "invalidate", "history", "get"])
def test_events_on_a_consent_that_does_not_exist(registry: ConsentRegistry, method: str) -> None:
    args: tuple[str, ...] = ("nope",) if method in ("history", "get") else ("nope", "resident")
    with pytest.raises(NotFound) as e:
        getattr(registry, method)(*args)
    assert e.value.reason == "CONSENT_NOT_FOUND"
    assert "nope" in e.value.message
    with pytest.raises(NotFound):
        registry.renew("nope", None, "resident")
    assert rows(registry._engine) == (0, 0, 0)


def test_same_id_same_terms_is_idempotent_other_terms_conflict(registry: ConsentRegistry) -> None:
    first = registry.give(record(), "portal")
    assert registry.give(record(), "portal again") == first
    for changes in (
        {"resident_id": "aurora-r000002"},
        {"purposes": ("scientific-research",)},
        {"recipients": ("category:public-transport-operator",)},
        {"valid_until": NOW + timedelta(days=31)},
        {"language": "sv"},
    ):
        with pytest.raises(AlreadyExists) as e:
            registry.give(record(**changes), "portal")
        assert e.value.reason == "CONSENT_RECORD_CONFLICT", changes
    assert registry.get("rec-1") == record()
    assert [h.event.value for h in registry.history("rec-1")] == ["given"]
    assert rows(registry._engine) == (1, 1, 1)


def test_refusing_a_given_record_is_a_conflict_not_a_replay(registry: ConsentRegistry) -> None:
    """The opposite decision under the same id must not come back as the first event's receipt."""
    registry.give(record(), "portal")
    with pytest.raises(AlreadyExists) as e:
        registry.refuse(record(), "portal")
    assert e.value.reason == "CONSENT_RECORD_CONFLICT"
    assert registry.get("rec-1").state is State.GIVEN
    refused = registry.refuse(record(record_id="rec-2"), "portal")
    assert registry.refuse(record(record_id="rec-2"), "portal") == refused
    with pytest.raises(AlreadyExists):
        registry.give(record(record_id="rec-2"), "portal")
    assert registry.get("rec-2").state is State.REFUSED


def test_failed_transitions_change_nothing(registry: ConsentRegistry) -> None:
    registry.give(record(), "portal")
    before = (registry.get("rec-1"), registry.history("rec-1"), rows(registry._engine))
    with pytest.raises(InvalidArgument) as e:
        registry.renew("rec-1", NOW - timedelta(days=5), "resident")
    assert e.value.reason == "CONSENT_DATES_INVALID"
    assert (registry.get("rec-1"), registry.history("rec-1"), rows(registry._engine)) == before
    registry.withdraw("rec-1", "resident")
    after_withdrawal = (registry.get("rec-1"), registry.history("rec-1"))
    for call in (
        lambda: registry.renew("rec-1", None, "resident"),
        lambda: registry.withdraw("rec-1", "resident"),
        lambda: registry.revoke("rec-1", "city"),
        lambda: registry.invalidate("rec-1", "city"),
    ):
        with pytest.raises(FailedPrecondition) as f:
            call()
        assert f.value.reason == "CONSENT_NOT_ACTIVE"
        assert (registry.get("rec-1"), registry.history("rec-1")) == after_withdrawal


# ---- listing and history -------------------------------------------------------------------------


def test_list_by_resident_paginates(registry: ConsentRegistry) -> None:
    mine = [f"rec-{i:02d}" for i in (5, 1, 7, 3, 0, 6, 2)]
    for rid in mine:
        registry.give(record(record_id=rid), "portal")
    for rid in ("rec-04", "rec-99"):
        registry.give(record(record_id=rid, resident_id="someone-else"), "portal")
    seen, token, pages = [], "", 0
    while True:
        page = registry.list_by_resident("aurora-r000001", 3, token)
        pages += 1
        assert len(page.records) <= 3
        seen += [r.record_id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(mine)
    assert pages == 3
    everything = registry.list_by_resident("aurora-r000001", 0, "")
    assert [r.record_id for r in everything.records] == sorted(mine)
    assert everything.next_page_token == ""
    assert all(r.resident_id == "aurora-r000001" for r in everything.records)
    exact = registry.list_by_resident("aurora-r000001", 7, "")
    assert (len(exact.records), exact.next_page_token) == (7, "")
    assert registry.list_by_resident("nobody", 10, "").records == []
    for bad in ("not base64!", "AAAA", consent.page_token("a", "b")):
        with pytest.raises(InvalidArgument) as e:
            registry.list_by_resident("aurora-r000001", 3, bad)
        assert e.value.reason == "PAGE_TOKEN_INVALID"


def test_history_has_one_signed_receipt_per_event(registry: ConsentRegistry) -> None:
    receipts = [registry.give(record(), "resident via portal")]
    later = NOW + timedelta(days=90)
    receipts.append(registry.renew("rec-1", later, "resident via portal"))
    receipts.append(registry.revoke("rec-1", "city via data-team"))
    history = registry.history("rec-1")
    assert [h.receipt for h in history] == receipts
    expected = [
        ("given", "given", "resident via portal", NOW + timedelta(days=30)),
        ("renewed", "renewed", "resident via portal", later),
        ("revoked", "revoked", "city via data-team", later),
    ]
    for event, (name, state, actor, until) in zip(history, expected, strict=True):
        payload = verified(event.receipt)
        assert (event.event.value, event.actor) == (name, actor)
        assert (payload["event"], payload["state"], payload["actor"]) == (name, state, actor)
        assert payload["at"] == timefmt.fmt(event.at)
        assert payload["valid_until"] == timefmt.fmt(until)
        assert payload["record_id"] == "rec-1" and payload["city"] == "aurora"
        other = Signer.generate()
        with pytest.raises(SignatureError):
            dsse.verify(
                dsse.Envelope.from_json(event.receipt),
                consent.RECEIPT,
                lambda kid, o=other: o.public if kid == o.keyid else None,
            )
    assert registry.get("rec-1").valid_until == later


def test_expire_due_records_expiry_for_consents_past_their_end(registry: ConsentRegistry) -> None:
    registry.give(record(record_id="short", valid_until=NOW + timedelta(days=1)), "portal")
    registry.give(record(record_id="long", valid_until=NOW + timedelta(days=100)), "portal")
    registry.give(record(record_id="open", valid_until=None), "portal")
    registry.give(record(record_id="gone", valid_until=NOW + timedelta(days=1)), "portal")
    registry.withdraw("gone", "resident")
    assert registry.expire_due(NOW) == []
    receipts = registry.expire_due(NOW + timedelta(days=2))
    assert [verified(r)["record_id"] for r in receipts] == ["short"]
    assert verified(receipts[0])["actor"] == "system"
    assert {rid: registry.get(rid).state for rid in ("short", "long", "open", "gone")} == {
        "short": State.EXPIRED,
        "long": State.GIVEN,
        "open": State.GIVEN,
        "gone": State.WITHDRAWN,
    }
    assert registry.expire_due(NOW + timedelta(days=2)) == []


def test_errors_are_one_family_each(registry: ConsentRegistry) -> None:
    """Every consent error is a CitybrokerError with an UPPER_SNAKE reason (mapped once at the edge)."""
    for call in (
        lambda: registry.give(record(purposes=("x",)), "p"),
        lambda: registry.withdraw("nope", "p"),
    ):
        with pytest.raises(CitybrokerError) as e:
            call()
        assert e.value.reason.isupper() and " " not in e.value.reason
