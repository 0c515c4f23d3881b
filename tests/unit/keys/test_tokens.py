"""Partner access tokens: each way a token can be wrong is refused with its own reason."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from typing import Any

import jwt
import pytest

from domain.errors import AuthenticationError
from keys import timefmt, tokens
from keys.ed25519 import Signer
from keys.trust import KeyGrant, Party, Role, TrustBundle

PARTNER, BROKER = "northwind", "broker-1"
PARTNER_KEY = Signer.generate()
CITY_KEY = Signer.generate()
GRANT = tokens.Grant(tokens.Call.QUERY, "sha256:" + "ab" * 32, ("aurora",), negotiate=True)


def bundle() -> TrustBundle:
    now = timefmt.now()
    grant = (KeyGrant(PARTNER_KEY.public, now - timedelta(days=1), now + timedelta(days=1)),)
    city_grant = (KeyGrant(CITY_KEY.public, now - timedelta(days=1), now + timedelta(days=1)),)
    return TrustBundle(
        "f",
        1,
        now,
        {
            PARTNER: Party(PARTNER, Role.PARTNER, "Northwind", "EU", keys=grant),
            "aurora": Party("aurora", Role.CITY, "Aurora", "EU", keys=city_grant),
        },
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": PARTNER,
        "sub": PARTNER,
        "aud": BROKER,
        "iat": now,
        "exp": now + 60,
        "jti": "jti-1",
        **GRANT.claims(),
    }
    c.update(overrides)
    return {k: v for k, v in c.items() if v is not None}


def encode(payload: dict[str, Any], signer: Signer = PARTNER_KEY, kid: str | None = "auto") -> str:
    headers = {"kid": signer.keyid if kid == "auto" else kid} if kid is not None else None
    return jwt.encode(payload, signer.crypto_key(), algorithm="EdDSA", headers=headers)


def b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], payload: dict[str, Any], signer: Signer) -> str:
    """A JWS built without PyJWT, for claims PyJWT refuses to encode."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    sig = base64.urlsafe_b64encode(signer.sign(signing_input.encode())).rstrip(b"=").decode()
    return f"{signing_input}.{sig}"


def reason_of(token: str) -> str:
    with pytest.raises(AuthenticationError) as e:
        tokens.verify(token, bundle(), BROKER)
    return e.value.reason


def test_issued_token_verifies() -> None:
    token = tokens.issue(PARTNER_KEY, PARTNER, BROKER, GRANT, lifetime_s=120, subject="app-7")
    verified = tokens.verify(token, bundle(), BROKER)
    assert (verified.issuer, verified.subject, verified.audience) == (PARTNER, "app-7", BROKER)
    assert verified.expires_at - verified.issued_at == 120
    assert verified.raw == token
    assert verified.grant == GRANT


def test_a_describe_grant_names_no_query() -> None:
    describe = tokens.Grant(tokens.Call.DESCRIBE)
    token = tokens.issue(PARTNER_KEY, PARTNER, BROKER, describe)
    assert tokens.verify(token, bundle(), BROKER).grant == describe


def test_missing_grant() -> None:
    assert reason_of(encode(claims(call=None))) == "TOKEN_CLAIM_MISSING"


@pytest.mark.parametrize(
    "bad",
    [
        {"call": "delete"},
        {"call": 1},
        {"query_digest": 5},
        {"query_digest": ""},
        {"query_digest": "x" * 200},
        {"cities": "aurora"},
        {"cities": [1]},
        {"cities": ["c"] * 65},
        {"negotiate": "yes"},
        {"negotiate": 1},
    ],
)
def test_malformed_grant(bad: dict[str, Any]) -> None:
    assert reason_of(encode(claims(**bad))) == "TOKEN_GRANT_INVALID"


@pytest.mark.parametrize("jti", ["", "j" * (tokens.MAX_JTI_CHARS + 1)])
def test_jti_empty_or_too_long(jti: str) -> None:
    assert reason_of(encode(claims(jti=jti))) == "TOKEN_INVALID"


def test_two_issued_tokens_have_different_ids() -> None:
    b = bundle()
    first = tokens.verify(tokens.issue(PARTNER_KEY, PARTNER, BROKER, GRANT), b, BROKER)
    second = tokens.verify(tokens.issue(PARTNER_KEY, PARTNER, BROKER, GRANT), b, BROKER)
    assert first.jti != second.jti


def test_token_without_kid_still_verifies() -> None:
    assert tokens.verify(encode(claims(), kid=None), bundle(), BROKER).jti == "jti-1"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.!!.x"])
def test_malformed(garbage: str) -> None:
    assert reason_of(garbage) == "TOKEN_MALFORMED"


def test_alg_none_is_not_allowed() -> None:
    token = f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims())}."
    assert reason_of(token) == "TOKEN_ALGORITHM_NOT_ALLOWED"


def test_hs256_is_not_allowed_even_with_the_public_key_as_secret() -> None:
    # The classic confusion attack: HMAC keyed with the partner's public key.
    token = jwt.encode(claims(), PARTNER_KEY.public.raw, algorithm="HS256")
    assert reason_of(token) == "TOKEN_ALGORITHM_NOT_ALLOWED"


def test_unknown_issuer() -> None:
    assert reason_of(encode(claims(iss="mallory"))) == "TOKEN_ISSUER_UNKNOWN"


def test_issuer_must_be_a_partner_not_a_city() -> None:
    assert reason_of(encode(claims(iss="aurora"), signer=CITY_KEY)) == "TOKEN_ISSUER_UNKNOWN"


def test_hand_signed_token_verifies() -> None:
    """The helper below is a faithful JWS, so the next test fails only for its claim."""
    header = {"alg": "EdDSA", "kid": PARTNER_KEY.keyid}
    assert (
        tokens.verify(hand_signed(header, claims(), PARTNER_KEY), bundle(), BROKER).jti == "jti-1"
    )


def test_non_string_issuer() -> None:
    header = {"alg": "EdDSA", "kid": PARTNER_KEY.keyid}
    token = hand_signed(header, claims(iss=42), PARTNER_KEY)
    assert reason_of(token) in {"TOKEN_ISSUER_UNKNOWN", "TOKEN_MALFORMED"}


def test_wrong_audience() -> None:
    assert reason_of(encode(claims(aud="broker-2"))) == "TOKEN_AUDIENCE_MISMATCH"


def test_expired_beyond_clock_skew() -> None:
    now = int(time.time())
    late = tokens.CLOCK_SKEW_S + 5
    token = encode(claims(iat=now - 100 - late, exp=now - late))
    assert reason_of(token) == "TOKEN_EXPIRED"


def test_expired_within_clock_skew_is_accepted() -> None:
    now = int(time.time())
    token = encode(claims(iat=now - 100, exp=now - tokens.CLOCK_SKEW_S + 10))
    assert tokens.verify(token, bundle(), BROKER).jti == "jti-1"


def test_lifetime_over_five_minutes() -> None:
    now = int(time.time())
    assert reason_of(encode(claims(iat=now, exp=now + tokens.MAX_LIFETIME_S + 1))) == (
        "TOKEN_LIFETIME_TOO_LONG"
    )
    ok = encode(claims(iat=now, exp=now + tokens.MAX_LIFETIME_S))
    assert tokens.verify(ok, bundle(), BROKER).expires_at == now + tokens.MAX_LIFETIME_S


def test_issued_in_the_future() -> None:
    now = int(time.time())
    future = now + tokens.CLOCK_SKEW_S + 60
    assert reason_of(encode(claims(iat=future, exp=future + 60))) == "TOKEN_NOT_YET_VALID"


def test_signed_by_another_key_under_the_partners_kid() -> None:
    token = encode(claims(), signer=Signer.generate(), kid=PARTNER_KEY.keyid)
    assert reason_of(token) == "TOKEN_SIGNATURE_INVALID"


def test_signed_by_another_key_with_its_own_kid() -> None:
    assert reason_of(encode(claims(), signer=Signer.generate())) == "TOKEN_KEY_UNKNOWN"


def test_signed_by_another_key_without_kid() -> None:
    assert reason_of(encode(claims(), signer=Signer.generate(), kid=None)) == (
        "TOKEN_SIGNATURE_INVALID"
    )


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "sub", "aud"])
def test_missing_claim(claim: str) -> None:
    reason = reason_of(encode(claims(**{claim: None})))
    if claim == "aud":
        # PyJWT checks the audience before the required-claims list.
        assert reason in {"TOKEN_CLAIM_MISSING", "TOKEN_AUDIENCE_MISMATCH"}
    else:
        assert reason == "TOKEN_CLAIM_MISSING"


def test_issue_refuses_long_or_empty_lifetimes() -> None:
    for lifetime in (tokens.MAX_LIFETIME_S + 1, 3600, 0, -5):
        with pytest.raises(ValueError):
            tokens.issue(PARTNER_KEY, PARTNER, BROKER, GRANT, lifetime_s=lifetime)
    assert tokens.issue(PARTNER_KEY, PARTNER, BROKER, GRANT, lifetime_s=tokens.MAX_LIFETIME_S)
