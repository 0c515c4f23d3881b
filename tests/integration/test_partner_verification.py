"""The partner client trusts no byte the broker returns: a response altered anywhere fails to verify."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from citybroker.broker.v1 import broker_pb2
from domain import statements
from domain.errors import VerificationError
from domain.query import Measure, MeasureKind, Query
from edge.partner_client import PartnerClient
from edge.wire import envelope_from_pb, envelope_to_pb
from keys import dsse
from keys.ed25519 import Signer
from tests.conftest import RunningFederation
from tests.integration.conftest import Wire, by_mode

QUERY = by_mode(measures=(Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)))


@pytest.fixture
def client(wire: Wire) -> Iterator[PartnerClient]:
    f = wire.fed
    with PartnerClient.connect(
        f.broker_address,
        f.broker_id,
        f.partner_id,
        f.partner_signer,
        f.ca_cert,
        f.trust_bundle,
        f.authority_key,
    ) as c:
        yield c


@pytest.fixture(scope="module")
def genuine(federation: RunningFederation) -> bytes:
    """One real response, serialised; each test alters its own copy."""
    w = Wire(federation)
    try:
        return w.query(QUERY).SerializeToString()
    finally:
        w.close()


def _copy(genuine: bytes) -> broker_pb2.QueryResponse:
    response = broker_pb2.QueryResponse()
    response.ParseFromString(genuine)
    return response


def _resign_receipt(
    response: broker_pb2.QueryResponse, change: Callable[[dict[str, Any]], None], signer: Signer
) -> None:
    payload = json.loads(response.receipt.payload)
    change(payload)
    response.receipt.CopyFrom(envelope_to_pb(dsse.sign(statements.RECEIPT, payload, signer)))


def test_the_genuine_response_verifies(client: PartnerClient, genuine: bytes) -> None:
    answer = client.verify(QUERY, _copy(genuine))
    assert answer.signatures_verified == 5
    assert [c.status for c in answer.cities] == ["answered"] * 3


def test_an_altered_merged_cell_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    response.cells[0].values["count_records"] += 1
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "ANSWER_MISMATCH"


def test_a_dropped_or_added_cell_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    del response.cells[-1]
    with pytest.raises(VerificationError):
        client.verify(QUERY, response)
    response = _copy(genuine)
    extra = response.cells.add()
    extra.key["mode"] = "teleport"
    extra.values["count_records"] = 99
    with pytest.raises(VerificationError):
        client.verify(QUERY, response)


def test_a_cell_marked_withheld_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    response.cells[0].withheld = True
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "ANSWER_MISMATCH"


def test_a_receipt_listing_another_result_digest_is_detected(
    client: PartnerClient, wire: Wire, genuine: bytes
) -> None:
    def change(receipt: dict[str, Any]) -> None:
        receipt["cities"][1]["result_digest"] = "sha256:" + "0" * 64

    response = _copy(genuine)
    # Signed by the real broker key, so only the link between the statements is wrong.
    _resign_receipt(response, change, wire.fed.broker_signer)
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "RECEIPT_MISMATCH"


def test_a_receipt_for_another_answer_is_detected(
    client: PartnerClient, wire: Wire, genuine: bytes
) -> None:
    def change(receipt: dict[str, Any]) -> None:
        receipt["answer_digest"] = "sha256:" + "1" * 64

    response = _copy(genuine)
    _resign_receipt(response, change, wire.fed.broker_signer)
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "ANSWER_MISMATCH"


def test_a_receipt_edited_without_resigning_is_detected(
    client: PartnerClient, genuine: bytes
) -> None:
    response = _copy(genuine)
    payload = json.loads(response.receipt.payload)
    payload["cities"][0]["result_digest"] = "sha256:" + "0" * 64
    response.receipt.payload = dsse.canonical(payload)
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "SIGNATURE_INVALID"


def test_a_receipt_signed_by_another_key_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    _resign_receipt(response, lambda r: None, Signer.generate())
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "SIGNATURE_INVALID"


def test_an_altered_city_result_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    result = response.cities[0].signed_result
    payload = json.loads(result.payload)
    payload["cells"][0]["values"]["count_records"] += 1
    result.payload = dsse.canonical(payload)
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "SIGNATURE_INVALID"


def test_a_city_result_hidden_as_refused_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    response.cities[2].status = broker_pb2.CITY_STATUS_REFUSED
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "RECEIPT_MISMATCH"


def test_results_swapped_between_cities_are_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    a, b = response.cities[0], response.cities[1]
    a_result = envelope_to_pb(envelope_from_pb(a.signed_result))
    a.signed_result.CopyFrom(b.signed_result)
    b.signed_result.CopyFrom(a_result)
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "RESULT_MISMATCH"


def test_a_response_to_another_query_is_detected(client: PartnerClient, genuine: bytes) -> None:
    other = Query("mobility", QUERY.purpose, QUERY.measures)
    with pytest.raises(VerificationError) as info:
        client.verify(other, _copy(genuine))
    assert info.value.reason == "QUERY_MISMATCH"


REFUSED_QUERY = by_mode(purpose="direct-marketing")


@pytest.fixture(scope="module")
def genuine_refusal(federation: RunningFederation) -> bytes:
    w = Wire(federation)
    try:
        return w.query(REFUSED_QUERY).SerializeToString()
    finally:
        w.close()


def test_the_genuine_refusal_verifies(client: PartnerClient, genuine_refusal: bytes) -> None:
    answer = client.verify(REFUSED_QUERY, _copy(genuine_refusal))
    assert [c.reason for c in answer.cities] == ["PURPOSE_NOT_IN_AGREEMENT"] * 3


def test_an_altered_refusal_reason_is_detected(
    client: PartnerClient, genuine_refusal: bytes
) -> None:
    """The outcome a partner sees must be the one the broker signed in its receipt."""
    response = _copy(genuine_refusal)
    response.cities[0].reason = "NO_AGREEMENT"
    with pytest.raises(VerificationError) as info:
        client.verify(REFUSED_QUERY, response)
    assert info.value.reason == "RECEIPT_MISMATCH"


def test_an_altered_city_status_is_detected(client: PartnerClient, genuine_refusal: bytes) -> None:
    response = _copy(genuine_refusal)
    response.cities[1].status = broker_pb2.CITY_STATUS_FAILED
    response.cities[1].code = "UNAVAILABLE"
    with pytest.raises(VerificationError) as info:
        client.verify(REFUSED_QUERY, response)
    assert info.value.reason == "RECEIPT_MISMATCH"


def test_a_city_listed_twice_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    response.cities.add().CopyFrom(response.cities[0])
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "RECEIPT_MISMATCH"


def test_an_altered_node_log_index_is_detected(client: PartnerClient, genuine: bytes) -> None:
    response = _copy(genuine)
    response.cities[0].log_index += 1
    with pytest.raises(VerificationError) as info:
        client.verify(QUERY, response)
    assert info.value.reason == "RECEIPT_MISMATCH"
