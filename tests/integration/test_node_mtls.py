"""A node trusts nothing the broker relays: it checks the mTLS peer per service, the broker's signature
on the query, and the partner's token inside it, itself."""

from __future__ import annotations

import dataclasses
import time
import uuid

import grpc
import pytest

from citybroker.node.v1 import node_pb2, node_pb2_grpc
from domain import statements
from domain.authorisation import grant_for
from domain.errors import RemoteError
from domain.query import Query
from edge.operator_client import consent_record
from edge.status import remote_error
from edge.wire import envelope_to_pb
from keys import dsse, tokens
from keys.ed25519 import Signer
from keys.tokens import Call
from tests.conftest import PURPOSE
from tests.integration.conftest import Wire, by_mode


def _request(
    wire: Wire,
    token: str | None = None,
    signer: Signer | None = None,
    broker: str | None = None,
    partner: str | None = None,
    query: Query | None = None,
) -> node_pb2.RunQueryRequest:
    fed = wire.fed
    env = statements.sign_request(
        statements.QUERY,
        statements.UnsignedRequest(
            str(uuid.uuid4()),
            broker or fed.broker_id,
            partner or fed.partner_id,
            token or wire.token(grant=grant_for(Call.QUERY, query or by_mode())),
            query or by_mode(),
        ),
        signer or fed.broker_signer,
    )
    return node_pb2.RunQueryRequest(signed_query=envelope_to_pb(env))


def _refused(
    stub: node_pb2_grpc.QueryServiceStub, request: node_pb2.RunQueryRequest
) -> RemoteError:
    with pytest.raises(grpc.RpcError) as info:
        stub.RunQuery(request, timeout=10)
    return remote_error(info.value)


def test_the_broker_certificate_may_query(wire: Wire) -> None:
    response = wire.node_query("aurora").RunQuery(_request(wire), timeout=10)
    result = statements.verify_result(
        dsse.Envelope(
            response.signed_result.payload_type,
            response.signed_result.payload,
            tuple(dsse.Signature(s.keyid, s.sig) for s in response.signed_result.signatures),
        ),
        wire.fed.bundle,
    )
    assert result["city"] == "aurora"


@pytest.mark.parametrize("identity", ["aurora.operator", "borealis", "aurora"])
def test_query_service_refuses_peers_that_are_not_brokers(wire: Wire, identity: str) -> None:
    e = _refused(wire.node_query("aurora", identity=identity), _request(wire))
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "PEER_NOT_ALLOWED")
    assert identity in e.message


@pytest.mark.parametrize("identity", ["broker-1", "borealis.operator", "aurora"])
def test_consent_service_refuses_peers_that_are_not_its_operators(
    wire: Wire, identity: str
) -> None:
    stub = wire.node_consent("aurora", identity)
    record = consent_record(
        "intruder-c1", "aurora-r000001", PURPOSE, wire.fed.partner_id, "mobility"
    )
    for call, request in (
        (stub.GiveConsent, node_pb2.GiveConsentRequest(record=record)),
        (stub.WithdrawConsent, node_pb2.WithdrawConsentRequest(record_id="aurora-r000001-c1")),
        (stub.GetConsent, node_pb2.GetConsentRequest(record_id="aurora-r000001-c1")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        e = remote_error(info.value)
        assert (e.code, e.reason) == ("UNAUTHENTICATED", "PEER_NOT_ALLOWED")


def test_agreement_service_refuses_the_broker(wire: Wire) -> None:
    stub = node_pb2_grpc.AgreementServiceStub(
        wire.channel(wire.fed.cities["aurora"].address, wire.fed.broker_id)
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.ListAgreements(node_pb2.ListAgreementsRequest(), timeout=10)
    e = remote_error(info.value)
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "PEER_NOT_ALLOWED")


def test_a_client_without_a_certificate_cannot_connect(wire: Wire) -> None:
    address = wire.fed.cities["aurora"].address
    stub = node_pb2_grpc.QueryServiceStub(wire.channel(address, identity=None))
    with pytest.raises(grpc.RpcError) as info:
        stub.RunQuery(_request(wire), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    plain = grpc.insecure_channel(address)
    try:
        with pytest.raises(grpc.RpcError) as info:
            node_pb2_grpc.QueryServiceStub(plain).RunQuery(_request(wire), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()


def test_a_query_signed_by_a_key_outside_the_bundle_is_refused(wire: Wire) -> None:
    e = _refused(wire.node_query("aurora"), _request(wire, signer=Signer.generate()))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "SIGNATURE_INVALID")


def test_a_query_signed_by_a_city_key_is_refused(wire: Wire) -> None:
    city_key = wire.fed.cities["borealis"].signer
    e = _refused(wire.node_query("aurora"), _request(wire, signer=city_key))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "SIGNATURE_INVALID")


def test_a_query_naming_an_unknown_broker_is_refused(wire: Wire) -> None:
    e = _refused(wire.node_query("aurora"), _request(wire, broker="broker-9"))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "SIGNER_UNKNOWN")


def test_a_tampered_query_is_refused(wire: Wire) -> None:
    request = _request(wire)
    payload = request.signed_query.payload.replace(PURPOSE.encode(), b"direct-marketing")
    request.signed_query.payload = payload
    e = _refused(wire.node_query("aurora"), request)
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "SIGNATURE_INVALID")


def test_a_query_of_the_wrong_payload_type_is_refused(wire: Wire) -> None:
    env = statements.sign_request(
        statements.DESCRIBE,
        statements.UnsignedRequest(
            str(uuid.uuid4()),
            wire.fed.broker_id,
            wire.fed.partner_id,
            wire.token(),
            None,
        ),
        wire.fed.broker_signer,
    )
    request = node_pb2.RunQueryRequest(signed_query=envelope_to_pb(env))
    e = _refused(wire.node_query("aurora"), request)
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "PAYLOAD_TYPE_MISMATCH")


def test_a_token_for_another_audience_inside_a_signed_query_is_refused(wire: Wire) -> None:
    grant = grant_for(Call.QUERY, by_mode())
    token = tokens.issue(wire.fed.partner_signer, wire.fed.partner_id, "broker-elsewhere", grant)
    e = _refused(wire.node_query("aurora"), _request(wire, token=token))
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_AUDIENCE_MISMATCH")


def test_a_token_of_one_partner_relayed_for_another_is_refused(wire: Wire) -> None:
    e = _refused(wire.node_query("aurora"), _request(wire, partner="someone-else"))
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_PARTNER_MISMATCH")


def test_an_expired_token_inside_a_signed_query_is_refused(wire: Wire) -> None:
    past = int(time.time()) - 200
    e = _refused(
        wire.node_query("aurora"), _request(wire, token=wire.token(iat=past - 60, exp=past))
    )
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_EXPIRED")


def test_the_node_refuses_a_replayed_token(wire: Wire) -> None:
    token = wire.token()
    stub = wire.node_query("cascadia")
    stub.RunQuery(_request(wire, token=token), timeout=10)
    e = _refused(stub, _request(wire, token=token))
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_REPLAYED")


def test_a_city_not_asked_refuses(wire: Wire) -> None:
    query = dataclasses.replace(by_mode(), cities=("borealis",))
    # The partner's token names the cities asked: the node refuses before deciding anything.
    e = _refused(wire.node_query("aurora"), _request(wire, query=query))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CITY_MISMATCH")
    # A token naming no cities (every city) for a query that names them: the query decides.
    grant = dataclasses.replace(grant_for(Call.QUERY, query), cities=())
    token = wire.token(grant=grant)
    e = _refused(wire.node_query("aurora"), _request(wire, query=query, token=token))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "CITY_NOT_ASKED")


def test_an_empty_request_is_refused_cleanly(wire: Wire) -> None:
    e = _refused(wire.node_query("aurora"), node_pb2.RunQueryRequest())
    assert e.code == "PERMISSION_DENIED"
    assert e.reason == "PAYLOAD_TYPE_MISMATCH"
