"""The broker's partner-token guard, seen from the network: every refusal is UNAUTHENTICATED with a
precise ErrorInfo reason, and nothing reaches the cities."""

from __future__ import annotations

import base64
import json
import time

import grpc
import jwt
import pytest

from citybroker.broker.v1 import broker_pb2
from domain.authorisation import grant_for
from edge.status import remote_error
from edge.wire import query_to_pb
from keys import tokens
from keys.ed25519 import Signer
from keys.tokens import Call
from tests.integration.conftest import Wire, by_mode

# Each token below is for the query `_refused` sends: only what the test changes is wrong.
GRANT = grant_for(Call.QUERY, by_mode())


def _refused(wire: Wire, metadata: list[tuple[str, str]] | None) -> tuple[str, str, str]:
    request = broker_pb2.QueryRequest(query=query_to_pb(by_mode()))
    with pytest.raises(grpc.RpcError) as info:
        wire.broker().Query(request, metadata=metadata, timeout=10)
    e = remote_error(info.value)
    return e.code, e.reason, e.message


def _b64(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_missing_authorization_metadata(wire: Wire) -> None:
    assert _refused(wire, None)[:2] == ("UNAUTHENTICATED", "TOKEN_MISSING")
    assert _refused(wire, [("x-other", "1")])[:2] == ("UNAUTHENTICATED", "TOKEN_MISSING")


@pytest.mark.parametrize(
    "value",
    [
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer " + "x" * 5000,
        "eyJhbGciOiJFZERTQSJ9.e30.sig",  # a token without the scheme
    ],
)
def test_malformed_authorization(wire: Wire, value: str) -> None:
    assert _refused(wire, [("authorization", value)])[:2] == (
        "UNAUTHENTICATED",
        "TOKEN_MALFORMED",
    )


def test_expired_token(wire: Wire) -> None:
    past = int(time.time()) - 200  # beyond the 30 s clock skew allowed
    token = wire.token(iat=past - 60, exp=past)
    code, reason, message = _refused(wire, wire.bearer(token))
    assert (code, reason) == ("UNAUTHENTICATED", "TOKEN_EXPIRED")
    assert "expired" in message


def test_token_for_another_audience(wire: Wire) -> None:
    token = tokens.issue(wire.fed.partner_signer, wire.fed.partner_id, "broker-elsewhere", GRANT)
    assert _refused(wire, wire.bearer(token))[:2] == ("UNAUTHENTICATED", "TOKEN_AUDIENCE_MISMATCH")


def test_token_from_unknown_issuer(wire: Wire) -> None:
    token = tokens.issue(Signer.generate(), "mallory-analytics", wire.fed.broker_id, GRANT)
    assert _refused(wire, wire.bearer(token))[:2] == ("UNAUTHENTICATED", "TOKEN_ISSUER_UNKNOWN")


def test_token_from_a_city_is_not_a_partner_token(wire: Wire) -> None:
    city = next(iter(wire.fed.cities))
    token = tokens.issue(wire.fed.cities[city].signer, city, wire.fed.broker_id, GRANT)
    assert _refused(wire, wire.bearer(token))[:2] == ("UNAUTHENTICATED", "TOKEN_ISSUER_UNKNOWN")


def test_token_signed_by_a_key_not_in_the_bundle(wire: Wire) -> None:
    token = tokens.issue(Signer.generate(), wire.fed.partner_id, wire.fed.broker_id, GRANT)
    code, reason, _ = _refused(wire, wire.bearer(token))
    assert code == "UNAUTHENTICATED"
    # The forged token names its own key id, which the bundle does not list for this partner.
    assert reason in {"TOKEN_KEY_UNKNOWN", "TOKEN_SIGNATURE_INVALID"}


def test_alg_none_is_refused(wire: Wire) -> None:
    now = int(time.time())
    claims = {
        "iss": wire.fed.partner_id,
        "sub": wire.fed.partner_id,
        "aud": wire.fed.broker_id,
        "iat": now,
        "exp": now + 60,
        "jti": "none-1",
        **GRANT.claims(),
    }
    token = jwt.encode(claims, None, algorithm="none")
    assert _refused(wire, wire.bearer(token))[:2] == (
        "UNAUTHENTICATED",
        "TOKEN_ALGORITHM_NOT_ALLOWED",
    )
    # Hand-made, with an upper-case "None" some libraries accept.
    token = f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(claims)}."
    assert _refused(wire, wire.bearer(token))[:2] == (
        "UNAUTHENTICATED",
        "TOKEN_ALGORITHM_NOT_ALLOWED",
    )


def test_hs256_is_refused(wire: Wire) -> None:
    now = int(time.time())
    claims = {
        "iss": wire.fed.partner_id,
        "sub": wire.fed.partner_id,
        "aud": wire.fed.broker_id,
        "iat": now,
        "exp": now + 60,
        "jti": "hs-1",
        **GRANT.claims(),
    }
    # The classic confusion attack: HMAC keyed with the partner's (public) key.
    secret = wire.fed.partner_signer.public.raw * 2
    token = jwt.encode(claims, secret, algorithm="HS256")
    assert _refused(wire, wire.bearer(token))[:2] == (
        "UNAUTHENTICATED",
        "TOKEN_ALGORITHM_NOT_ALLOWED",
    )


def test_replayed_token(wire: Wire) -> None:
    token = wire.token()
    first = wire.query(token=token)
    assert [c.status for c in first.cities] == [broker_pb2.CITY_STATUS_ANSWERED] * 3
    assert _refused(wire, wire.bearer(token))[:2] == ("UNAUTHENTICATED", "TOKEN_REPLAYED")


def test_token_lifetime_over_five_minutes(wire: Wire) -> None:
    now = int(time.time())
    token = wire.token(iat=now, exp=now + 3600)
    assert _refused(wire, wire.bearer(token))[:2] == ("UNAUTHENTICATED", "TOKEN_LIFETIME_TOO_LONG")


def test_token_without_jti(wire: Wire) -> None:
    now = int(time.time())
    signer = wire.fed.partner_signer
    token = jwt.encode(
        {
            "iss": wire.fed.partner_id,
            "sub": "x",
            "aud": wire.fed.broker_id,
            "iat": now,
            "exp": now + 60,
            **GRANT.claims(),
        },
        signer.crypto_key(),
        algorithm="EdDSA",
        headers={"kid": signer.keyid},
    )
    assert _refused(wire, wire.bearer(token))[:2] == ("UNAUTHENTICATED", "TOKEN_CLAIM_MISSING")


def test_describe_federation_is_guarded_too(wire: Wire) -> None:
    with pytest.raises(grpc.RpcError) as info:
        wire.broker().DescribeFederation(broker_pb2.DescribeFederationRequest(), timeout=10)
    e = remote_error(info.value)
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_MISSING")


def test_token_without_a_grant(wire: Wire) -> None:
    now = int(time.time())
    signer = wire.fed.partner_signer
    token = jwt.encode(
        {
            "iss": wire.fed.partner_id,
            "sub": wire.fed.partner_id,
            "aud": wire.fed.broker_id,
            "iat": now,
            "exp": now + 60,
            "jti": f"no-grant-{now}",
        },
        signer.crypto_key(),
        algorithm="EdDSA",
        headers={"kid": signer.keyid},
    )
    assert _refused(wire, wire.bearer(token))[:2] == ("UNAUTHENTICATED", "TOKEN_CLAIM_MISSING")


@pytest.mark.parametrize(
    "claims",
    [
        {"call": "delete"},
        {"call": None},
        {"cities": "aurora"},
        {"cities": [1]},
        {"negotiate": "yes"},
        {"query_digest": 5},
        {"query_digest": ""},
        {"jti": "j" * 200},
    ],
)
def test_token_with_a_malformed_grant(wire: Wire, claims: dict[str, object]) -> None:
    code, reason, _ = _refused(wire, wire.bearer(wire.token(**claims)))
    assert code == "UNAUTHENTICATED"
    assert reason == ("TOKEN_INVALID" if "jti" in claims else "TOKEN_GRANT_INVALID")
