"""An error for every input: undecodable requests, deeply nested JSON and envelopes with thousands of
signatures are refused with INVALID_ARGUMENT or a verification error and an ErrorInfo reason, never
INTERNAL, and before any expensive work."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from citybroker.common.v1 import common_pb2
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from domain import statements
from edge.status import remote_error
from keys import dsse
from keys.errors import SignatureError
from tests.integration.conftest import Wire
from tests.security.grpc_surface import call_raw, served_methods

# Field 1, length-delimited, with a length that runs past the end: no message decodes from it.
UNDECODABLE = b"\x0a\xff\xff\xff\x0f\x01"
DEEP = "[" * 100_000 + "]" * 100_000


def _servers(wire: Wire) -> list[tuple[str, grpc.Channel]]:
    fed = wire.fed
    return [
        ("broker", wire.channel(fed.broker_address)),
        ("aurora", wire.channel(fed.cities["aurora"].address, fed.broker_id)),
    ]


def test_undecodable_requests_are_invalid_argument_on_every_method(wire: Wire) -> None:
    seen = 0
    for server, channel in _servers(wire):
        methods = served_methods(channel)
        # Health and reflection as well as citybroker's own services.
        assert any(m.path.startswith("/grpc.health.v1.Health/") for m in methods)
        assert any(m.path.startswith("/grpc.reflection.") for m in methods)
        for method in methods:
            error = call_raw(channel, method, UNDECODABLE)
            assert error is not None, (server, method.path)
            assert (error.code, error.reason) == ("INVALID_ARGUMENT", "REQUEST_UNDECODABLE"), (
                server,
                method.path,
                error,
            )
            seen += 1
    assert seen > 30


def _operator_channel(wire: Wire, city: str) -> grpc.Channel:
    layout = wire.fed.cities[city]
    creds = grpc.ssl_channel_credentials(
        root_certificates=wire.fed.ca_cert.read_bytes(),
        private_key=layout.operator_key.read_bytes(),
        certificate_chain=layout.operator_cert.read_bytes(),
    )
    ch = grpc.secure_channel(layout.address, creds)
    wire._channels.append(ch)
    return ch


def test_deeply_nested_agreement_terms_give_a_reason(wire: Wire) -> None:
    stub = node_pb2_grpc.AgreementServiceStub(_operator_channel(wire, "aurora"))
    with pytest.raises(grpc.RpcError) as info:
        stub.ProposeAgreement(node_pb2.ProposeAgreementRequest(terms_json=DEEP), timeout=10)
    error = remote_error(info.value)
    assert (error.code, error.reason) == ("INVALID_ARGUMENT", "JSON_TOO_DEEP")


def test_deeply_nested_envelope_payload_gives_a_reason(wire: Wire) -> None:
    """A query envelope whose payload nests 100,000 levels, claiming the broker's key: the node
    reads the unverified payload to learn whose signature to check."""
    signed = dsse.Envelope(
        dsse.media_type(statements.QUERY),
        DEEP.encode(),
        (dsse.Signature(wire.fed.broker_signer.keyid, b"\0" * 64),),
    )
    request = node_pb2.RunQueryRequest(signed_query=_envelope_pb(signed))
    with pytest.raises(grpc.RpcError) as info:
        wire.node_query("aurora").RunQuery(request, timeout=10)
    error = remote_error(info.value)
    assert error.code != "INTERNAL" and error.reason, error


def test_thirty_thousand_signatures_are_refused_before_verifying_any(wire: Wire) -> None:
    """Each signature names the broker's real key, so each would cost a verification."""
    broker = wire.fed.broker_signer
    honest = statements.sign_request(
        statements.QUERY,
        statements.UnsignedRequest("r-sigs", wire.fed.broker_id, wire.fed.partner_id, "t", None),
        broker,
    )
    pb = common_pb2.Envelope(
        payload_type=honest.payload_type,
        payload=honest.payload,
        signatures=[common_pb2.Signature(keyid=broker.keyid, sig=b"\1" * 64)] * 30_000,
    )
    with pytest.raises(grpc.RpcError) as info:
        wire.node_query("aurora").RunQuery(node_pb2.RunQueryRequest(signed_query=pb), timeout=30)
    assert remote_error(info.value).reason == "TOO_MANY_SIGNATURES"


def test_envelope_files_are_bounded_too() -> None:
    sig = {"keyid": "k", "sig": base64.b64encode(b"\1" * 64).decode()}
    many = {"payloadType": "t", "payload": "", "signatures": [sig] * 30_000}
    with pytest.raises(SignatureError) as info:
        dsse.Envelope.from_json(json.dumps(many))
    assert info.value.reason == "TOO_MANY_SIGNATURES"
    with pytest.raises(SignatureError) as info:
        dsse.Envelope.from_json(DEEP)
    assert info.value.reason == "JSON_TOO_DEEP"
    deep_payload = dsse.Envelope("t", DEEP.encode(), ())
    with pytest.raises(SignatureError) as info:
        dsse.verify(deep_payload, "t", lambda _k: None)
    assert info.value.reason in {"PAYLOAD_TYPE_MISMATCH", "SIGNATURE_INVALID"}  # never parsed


def _envelope_pb(env: dsse.Envelope) -> common_pb2.Envelope:
    return common_pb2.Envelope(
        payload_type=env.payload_type,
        payload=env.payload,
        signatures=[common_pb2.Signature(keyid=s.keyid, sig=s.sig) for s in env.signatures],
    )
