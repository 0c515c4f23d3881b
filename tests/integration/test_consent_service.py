"""The node's ConsentService over real gRPC with mTLS: every field round-trips, bad input is a clear
error with nothing applied, listing paginates, history receipts verify with the city's key, Kantara
export, recipient categories in queries, and residents' exchange transparency."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from citybroker.node.v1 import node_pb2
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.operator_client import consent_record
from edge.partner_client import Answer
from edge.status import remote_error
from edge.wire import envelope_from_pb
from keys import dsse, timefmt
from node import consent, synthetic
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation
from tests.integration.conftest import Wire

CITY = "aurora"
NOW = timefmt.now()
MODULE_RESIDENTS = 30  # per city, in this module's own federation
FRESH_RESIDENTS = 120  # per city, in the conftest's fresh_federation
TOTALS = Query("mobility", PURPOSE, (Measure(MeasureKind.COUNT_RESIDENTS),), cities=(CITY,))


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    """A federation of this module's own: the tests add consents for residents with no data."""
    running = start_federation(
        tmp_path_factory.mktemp("consent-service"), residents_per_city=MODULE_RESIDENTS
    )
    yield running
    stop_federation(running)


def stub(rf: RunningFederation, city: str = CITY) -> Any:
    return rf.operators[city].consent


def full_pb(record_id: str, resident_id: str = "portal-r1") -> node_pb2.ConsentRecord:
    return node_pb2.ConsentRecord(
        record_id=record_id,
        resident_id=resident_id,
        purposes=["urban-mobility-planning", "scientific-research"],
        recipients=["northwind-mobility", "category:public-transport-operator"],
        data_categories=["mobility", "health"],
        valid_from=timefmt.fmt(NOW - timedelta(days=2)),
        valid_until=timefmt.fmt(NOW + timedelta(days=200)),
        lawful_basis="explicit-consent",
        notice_url="https://aurora.example/privacy?lang=fi",
        notice_hash="sha256:" + "c0" * 32,
        language="fi-FI",
        jurisdiction="EU-FI",
        retention_days=730,
        collection_method="portal (strong authentication)",
        withdrawal_method="portal › suostumukset",
    )


def city_verified(rf: RunningFederation, envelope: dsse.Envelope, city: str = CITY) -> Any:
    payload = json.loads(envelope.payload)
    lookup = rf.fed.bundle.key_lookup(city, timefmt.parse(payload["at"]))
    verified, _ = dsse.verify(envelope, consent.RECEIPT, lookup)
    return verified


def rpc_error(call: Any, *args: Any) -> tuple[str, str, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10)
    e = remote_error(info.value)
    return e.code, e.reason, e.message


# ---- the registry over gRPC ----------------------------------------------------------------------


def test_every_field_round_trips(rf: RunningFederation) -> None:
    sent = full_pb("svc-full")
    response = stub(rf).GiveConsent(node_pb2.GiveConsentRequest(record=sent), timeout=10)
    payload = city_verified(rf, envelope_from_pb(response.receipt))
    assert (payload["event"], payload["state"], payload["city"]) == ("given", "given", CITY)
    assert payload["actor"] == f"resident via {CITY}.operator"
    got = stub(rf).GetConsent(node_pb2.GetConsentRequest(record_id="svc-full"), timeout=10).record
    expected = node_pb2.ConsentRecord()
    expected.CopyFrom(sent)
    expected.state = "given"
    # Repeated fields come back sorted; everything else exactly as given.
    for name in ("purposes", "recipients", "data_categories"):
        expected.ClearField(name)
        getattr(expected, name).extend(sorted(getattr(sent, name)))
    assert got == expected
    # Giving the same record again returns the same receipt; other terms are a conflict.
    again = stub(rf).GiveConsent(node_pb2.GiveConsentRequest(record=sent), timeout=10)
    assert envelope_from_pb(again.receipt) == envelope_from_pb(response.receipt)
    changed = node_pb2.ConsentRecord()
    changed.CopyFrom(sent)
    changed.retention_days = 1
    assert rpc_error(stub(rf).GiveConsent, node_pb2.GiveConsentRequest(record=changed))[:2] == (
        "ALREADY_EXISTS",
        "CONSENT_RECORD_CONFLICT",
    )


def test_defaults_when_fields_are_left_empty(rf: RunningFederation) -> None:
    bare = node_pb2.ConsentRecord(
        record_id="svc-bare",
        resident_id="portal-r2",
        purposes=[PURPOSE],
        recipients=["northwind-mobility"],
        data_categories=["mobility"],
    )
    stub(rf).GiveConsent(node_pb2.GiveConsentRequest(record=bare), timeout=10)
    got = stub(rf).GetConsent(node_pb2.GetConsentRequest(record_id="svc-bare"), timeout=10).record
    assert (got.lawful_basis, got.language, got.valid_until, got.state) == (
        "consent",
        "en",
        "",
        "given",
    )
    assert abs(timefmt.parse(got.valid_from) - timefmt.now()) < timedelta(minutes=2)


def bad(changes: dict[str, Any]) -> node_pb2.ConsentRecord:
    r = full_pb("svc-bad")
    for name, value in changes.items():
        if isinstance(value, list):
            r.ClearField(name)
            getattr(r, name).extend(value)
        else:
            setattr(r, name, value)
    return r


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"purposes": ["selling-data"]}, "PURPOSE_UNKNOWN"),
        ({"data_categories": ["dna"]}, "DATA_CATEGORY_UNKNOWN"),
        ({"recipients": ["not-a-party"]}, "RECIPIENT_UNKNOWN"),
        ({"recipients": ["category:astrologers"]}, "RECIPIENT_UNKNOWN"),
        ({"lawful_basis": "legitimate-interest"}, "LAWFUL_BASIS_UNKNOWN"),
        ({"valid_until": timefmt.fmt(NOW - timedelta(days=3))}, "CONSENT_DATES_INVALID"),
        ({"valid_until": "next tuesday"}, "TIMESTAMP_INVALID"),
        ({"valid_from": "2026-01-01T00:00:00"}, "TIMESTAMP_INVALID"),
        ({"notice_hash": "sha1:abc"}, "CONSENT_FIELD_INVALID"),
        ({"notice_url": "file:///etc/passwd"}, "CONSENT_FIELD_INVALID"),
        ({"language": "Finnish!"}, "CONSENT_FIELD_INVALID"),
        ({"jurisdiction": "J" * 40}, "CONSENT_FIELD_INVALID"),
        ({"retention_days": 40_000}, "CONSENT_FIELD_INVALID"),
        ({"record_id": ""}, "CONSENT_FIELD_INVALID"),
        ({"purposes": []}, "CONSENT_FIELD_INVALID"),
    ],
)
def test_bad_input_is_invalid_argument_and_nothing_is_stored(
    rf: RunningFederation, changes: dict[str, Any], reason: str
) -> None:
    for method, request in (
        ("GiveConsent", node_pb2.GiveConsentRequest),
        ("RefuseConsent", node_pb2.RefuseConsentRequest),
    ):
        code, got, message = rpc_error(getattr(stub(rf), method), request(record=bad(changes)))
        assert (code, got) == ("INVALID_ARGUMENT", reason), method
        assert message and "Traceback" not in message and "\n" not in message
    assert rpc_error(stub(rf).GetConsent, node_pb2.GetConsentRequest(record_id="svc-bad"))[:2] == (
        "NOT_FOUND",
        "CONSENT_NOT_FOUND",
    )


def test_events_on_unknown_records_and_bad_renewals(rf: RunningFederation) -> None:
    s = stub(rf)
    for call, request in (
        (s.WithdrawConsent, node_pb2.WithdrawConsentRequest(record_id="svc-none")),
        (s.RevokeConsent, node_pb2.RevokeConsentRequest(record_id="svc-none")),
        (s.InvalidateConsent, node_pb2.InvalidateConsentRequest(record_id="svc-none")),
        (s.RenewConsent, node_pb2.RenewConsentRequest(record_id="svc-none")),
        (s.GetConsentHistory, node_pb2.GetConsentHistoryRequest(record_id="svc-none")),
        (s.ExportConsentReceipt, node_pb2.ExportConsentReceiptRequest(record_id="svc-none")),
    ):
        assert rpc_error(call, request)[:2] == ("NOT_FOUND", "CONSENT_NOT_FOUND")
    s.GiveConsent(node_pb2.GiveConsentRequest(record=full_pb("svc-renew")), timeout=10)
    renew = node_pb2.RenewConsentRequest(record_id="svc-renew", valid_until="soon")
    assert rpc_error(s.RenewConsent, renew)[:2] == ("INVALID_ARGUMENT", "TIMESTAMP_INVALID")
    early = timefmt.fmt(NOW - timedelta(days=5))
    renew = node_pb2.RenewConsentRequest(record_id="svc-renew", valid_until=early)
    assert rpc_error(s.RenewConsent, renew)[:2] == ("INVALID_ARGUMENT", "CONSENT_DATES_INVALID")
    history = s.GetConsentHistory(
        node_pb2.GetConsentHistoryRequest(record_id="svc-renew"), timeout=10
    )
    assert [e.event for e in history.events] == ["given"]


def test_history_has_one_signed_receipt_per_event(rf: RunningFederation) -> None:
    s = stub(rf)
    receipts = [
        s.GiveConsent(node_pb2.GiveConsentRequest(record=full_pb("svc-h")), timeout=10).receipt
    ]
    later = timefmt.fmt(NOW + timedelta(days=400))
    receipts.append(
        s.RenewConsent(
            node_pb2.RenewConsentRequest(record_id="svc-h", valid_until=later), timeout=10
        ).receipt
    )
    receipts.append(
        s.RevokeConsent(node_pb2.RevokeConsentRequest(record_id="svc-h"), timeout=10).receipt
    )
    history = s.GetConsentHistory(node_pb2.GetConsentHistoryRequest(record_id="svc-h"), timeout=10)
    assert [e.event for e in history.events] == ["given", "renewed", "revoked"]
    assert [e.receipt for e in history.events] == receipts
    for e in history.events:
        payload = city_verified(rf, envelope_from_pb(e.receipt))
        assert (payload["event"], payload["actor"], payload["at"]) == (e.event, e.actor, e.at)
    assert [e.actor.split(" ")[0] for e in history.events] == ["resident", "resident", "city"]
    assert city_verified(rf, envelope_from_pb(receipts[1]))["valid_until"] == later
    # Another city's key does not verify aurora's receipts.
    with pytest.raises(Exception):  # noqa: B017
        city_verified(rf, envelope_from_pb(receipts[0]), city="borealis")
    got = s.GetConsent(node_pb2.GetConsentRequest(record_id="svc-h"), timeout=10).record
    assert (got.state, got.valid_until) == ("revoked", later)


def test_list_resident_consents_paginates(rf: RunningFederation) -> None:
    s = stub(rf)
    mine = [f"svc-list-{i}" for i in (3, 0, 4, 1, 2)]
    for rid in [*mine, "svc-list-other"]:
        record = full_pb(rid, "portal-lister" if rid != "svc-list-other" else "portal-else")
        s.GiveConsent(node_pb2.GiveConsentRequest(record=record), timeout=10)
    seen, token, pages = [], "", 0
    while True:
        page = s.ListResidentConsents(
            node_pb2.ListResidentConsentsRequest(
                resident_id="portal-lister", page_size=2, page_token=token
            ),
            timeout=10,
        )
        pages += 1
        assert len(page.records) <= 2
        seen += [r.record_id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert (seen, pages) == (sorted(mine), 3)
    request = node_pb2.ListResidentConsentsRequest(
        resident_id="portal-lister", page_token=consent.page_token("svc", "list", "x")
    )
    assert rpc_error(s.ListResidentConsents, request)[:2] == (
        "INVALID_ARGUMENT",
        "PAGE_TOKEN_INVALID",
    )


def test_kantara_export(rf: RunningFederation) -> None:
    s = stub(rf)
    s.GiveConsent(node_pb2.GiveConsentRequest(record=full_pb("svc-k")), timeout=10)
    s.WithdrawConsent(node_pb2.WithdrawConsentRequest(record_id="svc-k"), timeout=10)
    response = s.ExportConsentReceipt(
        node_pb2.ExportConsentReceiptRequest(record_id="svc-k"), timeout=10
    )
    cr = json.loads(response.kantara_json)
    assert cr["version"] == "KI-CR-v1.1.0"
    for name in (
        "version",
        "jurisdiction",
        "consentTimestamp",
        "collectionMethod",
        "consentReceiptID",
        "language",
        "piiPrincipalId",
        "piiControllers",
        "policyUrl",
        "services",
        "sensitive",
        "spiCat",
    ):
        assert name in cr, name
    assert (cr["jurisdiction"], cr["language"], cr["piiPrincipalId"]) == (
        "EU-FI",
        "fi-FI",
        "portal-r1",
    )
    assert cr["piiControllers"][0]["piiController"] == "Aurora"
    assert cr["sensitive"] is True and cr["spiCat"] == ["health"]
    assert cr["consentReceiptID"].endswith(":withdrawn")
    # It is made from the latest signed receipt, which comes with it.
    payload = city_verified(rf, envelope_from_pb(response.receipt))
    assert payload["event"] == "withdrawn"
    assert cr["consentTimestamp"] == int(timefmt.parse(payload["at"]).timestamp())


def test_only_this_citys_operators_may_call(rf: RunningFederation) -> None:
    wire = Wire(rf)
    try:
        for identity in ("borealis.operator", rf.fed.broker_id, CITY):
            foreign = wire.node_consent(CITY, identity)
            code, reason, _ = rpc_error(
                foreign.GetConsent, node_pb2.GetConsentRequest(record_id="svc-full")
            )
            assert (code, reason) == ("UNAUTHENTICATED", "PEER_NOT_ALLOWED"), identity
    finally:
        wire.close()


# ---- consent in queries, and what the resident can see afterwards --------------------------------


def ask(rf: RunningFederation, query: Query) -> Answer:
    with rf.partner() as client:
        answer = client.query(query)
    assert [c.status for c in answer.cities] == ["answered"] * len(answer.cities), answer.cities
    return answer


def residents_of(rf: RunningFederation, city: str, count: int) -> list[synthetic.Resident]:
    """Everyone start_federation created in `city` (the same seed, so the same people)."""
    index = list(rf.fed.cities).index(city)
    return synthetic.residents(city, rf.fed.cities[city].plan.districts, count, index)


def test_consent_to_the_partners_category_counts(rf: RunningFederation) -> None:
    consenting = {r.resident_id for r in rf.consenting[CITY]}
    others = [
        r for r in residents_of(rf, CITY, MODULE_RESIDENTS) if r.resident_id not in consenting
    ]
    assert len(others) >= 3
    by_category, other_category, other_data = others[:3]
    records = [
        consent_record(
            "cat-1",
            by_category.resident_id,
            PURPOSE,
            "category:public-transport-operator",
            "mobility",
        ),
        consent_record(
            "cat-2",
            other_category.resident_id,
            PURPOSE,
            "category:research-institution",
            "mobility",
        ),
        consent_record(
            "cat-3",
            other_data.resident_id,
            PURPOSE,
            "category:public-transport-operator",
            "location",
        ),
    ]
    rf.operators[CITY].give_consents(records)
    # The first totals this partner receives: only the consent to its own category counts.
    (after,) = ask(rf, TOTALS).cells
    assert after.values["count_residents"] == len(consenting) + 1
    # Withdrawn, that resident leaves the next answer, which beside the one before would single
    # them out: the exact regime's differencing guard refuses it (the count moved by one).
    rf.operators[CITY].withdraw("cat-1")
    with rf.partner() as client:
        [refused] = client.query(TOTALS).cities
    assert (refused.status, refused.reason) == ("refused", "DIFFERENCING_RISK")


def exchanges(
    rf: RunningFederation, resident_id: str, page_size: int = 0, token: str = ""
) -> node_pb2.ListResidentExchangesResponse:
    return stub(rf).ListResidentExchanges(
        node_pb2.ListResidentExchangesRequest(
            resident_id=resident_id, page_size=page_size, page_token=token
        ),
        timeout=10,
    )


def test_residents_see_the_exchanges_that_used_their_records(
    fresh_federation: RunningFederation,
) -> None:
    rf = fresh_federation
    districts = rf.fed.cities[CITY].plan.districts
    small = districts[0]
    in_small = [r for r in rf.consenting[CITY] if r.district == small]
    kept, withdrawn = in_small[:3], in_small[3:]  # three is under k = 10: the cell is withheld
    for r in withdrawn:
        rf.operators[CITY].withdraw(f"{r.resident_id}-c1")
    by_district = Query(
        "mobility",
        PURPOSE,
        (Measure(MeasureKind.COUNT_RESIDENTS),),
        group_by=(Dimension("district"),),
        cities=(CITY,),
    )
    answer = ask(rf, by_district)
    cells = {c.key["district"]: c for c in answer.cells}
    assert cells[small].withheld
    open_districts = {d for d, c in cells.items() if not c.withheld}
    assert open_districts, cells
    [city_answer] = answer.cities
    released = [r for r in rf.consenting[CITY] if r.district in open_districts]
    held_back = [r for r in rf.consenting[CITY] if r.district not in open_districts]
    assert released
    for r in released:
        [e] = exchanges(rf, r.resident_id).exchanges
        assert (e.partner, e.purpose, e.dataset) == (rf.fed.partner_id, PURPOSE, "mobility")
        assert (e.agreement_id, e.agreement_version) == (f"{CITY}--{rf.fed.partner_id}", 1)
        assert e.log_index == city_answer.log_index
        assert e.request_id == answer.receipt["request_id"]
        assert abs(timefmt.parse(e.released_at) - timefmt.now()) < timedelta(minutes=2)
    consenting = {r.resident_id for r in rf.consenting[CITY]}
    never = [r for r in residents_of(rf, CITY, FRESH_RESIDENTS) if r.resident_id not in consenting]
    assert set(kept) <= set(held_back)
    for r in [*held_back, *withdrawn, *never[:5]]:
        response = exchanges(rf, r.resident_id)
        assert list(response.exchanges) == [], (r, small)
        assert response.next_page_token == ""

    # Two more releases: the resident's exchanges come newest first, in pages.
    resident = released[0].resident_id
    indexes = [city_answer.log_index] + [ask(rf, TOTALS).cities[0].log_index for _ in range(2)]
    seen, token, pages = [], "", 0
    while True:
        page = exchanges(rf, resident, page_size=2, token=token)
        pages += 1
        assert len(page.exchanges) <= 2
        seen += list(page.exchanges)
        token = page.next_page_token
        if not token:
            break
    assert pages == 2
    assert [e.log_index for e in seen] == sorted(indexes, reverse=True)
    assert len({e.request_id for e in seen}) == 3
    # Another city's resident took part in none of aurora's exchanges.
    other = rf.consenting["borealis"][0].resident_id
    assert list(exchanges(rf, other).exchanges) == []
    code, reason, _ = rpc_error(
        stub(rf).ListResidentExchanges,
        node_pb2.ListResidentExchangesRequest(resident_id=resident, page_token="garbage"),
    )
    assert (code, reason) == ("INVALID_ARGUMENT", "PAGE_TOKEN_INVALID")
