"""Signed statements of an exchange: broker requests and city results."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from domain import statements
from domain.query import Dimension, Measure, MeasureKind, Query
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.errors import SignatureError
from keys.trust import KeyGrant, Party, Role, TrustBundle

NOW = timefmt.now()
KEYS = {name: Signer.generate() for name in ("aurora", "borealis", "northwind", "broker-1")}
ROLES = {
    "aurora": Role.CITY,
    "borealis": Role.CITY,
    "northwind": Role.PARTNER,
    "broker-1": Role.BROKER,
}
QUERY = Query(
    "mobility",
    "urban-mobility-planning",
    (Measure(MeasureKind.COUNT_RECORDS),),
    group_by=(Dimension("mode"),),
)


def bundle() -> TrustBundle:
    window = (NOW - timedelta(days=1), NOW + timedelta(days=1))
    return TrustBundle(
        "f",
        1,
        NOW,
        {
            n: Party(n, ROLES[n], n, "EU", keys=(KeyGrant(s.public, *window),))
            for n, s in KEYS.items()
        },
    )


def request() -> statements.BrokerRequest:
    env = statements.sign_request(
        statements.QUERY,
        statements.UnsignedRequest("req-1", "broker-1", "northwind", "tok", QUERY),
        KEYS["broker-1"],
    )
    return statements.verify_request(env, statements.QUERY, bundle())


def result(city: str = "aurora", signer: str | None = None) -> dsse.Envelope:
    return statements.sign_result(
        request(),
        statements.UnsignedResult(
            city,
            ("aurora--northwind", 1),
            10,
            [{"key": {"mode": "bus"}, "values": {"count_records": 42}, "records": 42}],
            [{"mode": "car"}],
        ),
        KEYS[signer or city],
    )


def reason(env: dsse.Envelope) -> str:
    with pytest.raises(SignatureError) as e:
        statements.verify_result(env, bundle())
    return e.value.reason


def test_broker_request_round_trip() -> None:
    req = request()
    assert (req.request_id, req.broker, req.partner, req.token) == (
        "req-1",
        "broker-1",
        "northwind",
        "tok",
    )
    assert req.query == QUERY
    assert req.digest.startswith("sha256:") and len(req.digest) == len("sha256:") + 64


def test_request_signed_by_a_city_is_refused() -> None:
    env = statements.sign_request(
        statements.QUERY,
        statements.UnsignedRequest("r", "aurora", "northwind", "tok", QUERY),
        KEYS["aurora"],
    )
    with pytest.raises(SignatureError) as e:
        statements.verify_request(env, statements.QUERY, bundle())
    assert e.value.reason == "SIGNER_UNKNOWN"


def test_result_signed_by_its_city_verifies() -> None:
    payload = statements.verify_result(result(), bundle())
    assert payload["city"] == "aurora"
    assert payload["query_digest"] == request().digest
    assert payload["cells"][0]["values"] == {"count_records": 42}
    assert payload["withheld"] == [{"mode": "car"}]


def test_result_claiming_a_non_city_is_refused() -> None:
    assert reason(result(city="northwind")) == "SIGNER_UNKNOWN"
    assert reason(result(city="broker-1")) == "SIGNER_UNKNOWN"


def test_result_naming_one_city_signed_by_another_is_refused() -> None:
    assert reason(result(city="aurora", signer="borealis")) == "SIGNATURE_INVALID"


def test_result_with_a_tampered_payload_is_refused() -> None:
    env = result()
    tampered = env.payload.replace(b'"count_records":42', b'"count_records":43')
    assert tampered != env.payload
    assert reason(dsse.Envelope(env.payload_type, tampered, env.signatures)) == "SIGNATURE_INVALID"


def test_result_reattributed_to_another_city_is_refused() -> None:
    env = result()
    obj = json.loads(env.payload)
    obj["city"] = "borealis"
    moved = dsse.Envelope(env.payload_type, dsse.canonical(obj), env.signatures)
    assert reason(moved) == "SIGNATURE_INVALID"


def test_a_query_envelope_is_not_a_result() -> None:
    env = statements.sign_request(
        statements.QUERY,
        statements.UnsignedRequest("r", "broker-1", "northwind", "tok", QUERY),
        KEYS["broker-1"],
    )
    assert reason(env) == "PAYLOAD_TYPE_MISMATCH"


def test_unparseable_result_is_malformed() -> None:
    env = dsse.Envelope(dsse.media_type(statements.RESULT), b"nope", ())
    assert reason(env) == "PAYLOAD_MALFORMED"


def test_digest() -> None:
    assert statements.digest(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
