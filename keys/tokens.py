"""Partner access tokens: short-lived, single-use EdDSA JWTs, each bound to one call.

A token names its issuer (the partner, as listed in the trust bundle), subject, audience (the broker),
a unique `jti`, and what it authorises (its `Grant`): the call (query, plan or describe), the digest
of the query as the partner asked it, the cities asked, and whether the broker may negotiate a
coarser shape. Lifetimes over five minutes are refused, which bounds how long a store of consumed
token ids must remember a `jti`.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import jwt

from domain.errors import AuthenticationError
from keys.ed25519 import PublicKey, Signer
from keys.trust import Role, TrustBundle

MAX_LIFETIME_S = 300
CLOCK_SKEW_S = 30
ALGORITHM = "EdDSA"
# A jti is stored until its token expires; longer ones are refused rather than stored.
MAX_JTI_CHARS = 128
_MAX_GRANT_CITIES = 64


class Call(StrEnum):
    """The broker call a token authorises."""

    QUERY = "query"
    PLAN = "plan"
    DESCRIBE = "describe"


@dataclass(frozen=True)
class Grant:
    """What a token authorises: one `call`; for a query or plan, the query with `query_digest`
    (domain.query.query_digest of the query as the partner asked it) at `cities` (empty: every
    city, as the query's own empty city list means), and with `negotiate` a coarser shape of it."""

    call: Call
    query_digest: str = ""
    cities: tuple[str, ...] = ()
    negotiate: bool = False

    def claims(self) -> dict[str, Any]:
        """The grant as JWT claims."""
        return {
            "call": self.call.value,
            "query_digest": self.query_digest,
            "cities": list(self.cities),
            "negotiate": self.negotiate,
        }

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Grant:
        """The grant a verified token's claims state; TOKEN_CLAIM_MISSING without a `call`,
        TOKEN_GRANT_INVALID when a grant claim has the wrong type or value."""
        if "call" not in claims:
            raise _fail("the token lacks the 'call' claim", "TOKEN_CLAIM_MISSING")
        call, digest = claims["call"], claims.get("query_digest", "")
        cities, negotiate = claims.get("cities", []), claims.get("negotiate", False)
        if (
            call not in {c.value for c in Call}
            or not isinstance(digest, str)
            or len(digest) > MAX_JTI_CHARS
            or not isinstance(cities, list)
            or len(cities) > _MAX_GRANT_CITIES
            or not all(isinstance(c, str) for c in cities)
            or not isinstance(negotiate, bool)
            or (call != Call.DESCRIBE and not digest)
        ):
            raise _fail(
                "the token's grant (call, query, cities) is malformed", "TOKEN_GRANT_INVALID"
            )
        return cls(Call(call), digest, tuple(cities), negotiate)


def issue(
    signer: Signer,
    issuer: str,
    audience: str,
    grant: Grant,
    lifetime_s: int = 120,
    subject: str | None = None,
) -> str:
    """A JWT signed by `signer` (kid: its key id), fresh jti, authorising `grant` only;
    ValueError unless 0 < lifetime_s <= 300."""
    if not 0 < lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(f"token lifetime must be between 1 and {MAX_LIFETIME_S} seconds")
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": subject or issuer,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_s,
        "jti": secrets.token_urlsafe(16),
        **grant.claims(),
    }
    return jwt.encode(
        claims, signer.crypto_key(), algorithm=ALGORITHM, headers={"kid": signer.keyid}
    )


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    subject: str
    audience: str
    jti: str
    issued_at: int
    expires_at: int
    raw: str
    grant: Grant


def _fail(message: str, reason: str) -> AuthenticationError:
    return AuthenticationError(message, reason=reason)


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims as PyJWT parses them, signature unchecked (the checks of
    get_unverified_header and of an unverified decode together); TOKEN_MALFORMED if it cannot."""
    try:
        unverified = jwt.decode_complete(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _fail("the token is not a well-formed JWT", "TOKEN_MALFORMED") from None
    return unverified["header"], unverified["payload"]


def _segment(text: str) -> Any:
    raw = text.encode("ascii")
    return json.loads(base64.b64decode(raw + b"=" * (-len(raw) % 4), b"-_", validate=True))


def _quick_parse(token: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Header and claims of a plain compact JWS by the standard library, or None for anything
    else. Only chooses the key: the verified decode parses again, strictly, and a token that
    PyJWT would not parse is refused as malformed all the same (see `verify`)."""
    parts = token.split(".")
    if len(parts) != 3 or "=" in token:
        return None
    try:
        header, claims = _segment(parts[0]), _segment(parts[1])
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        return None
    if type(header) is not dict or type(claims) is not dict or "b64" in header:
        return None
    return header, claims


_Refuse = Callable[[str, str], AuthenticationError]


def verify(
    token: str, bundle: TrustBundle, audience: str, at: datetime | None = None
) -> VerifiedToken:
    """Check signature, algorithm, issuer, audience, expiry, lifetime and the grant's shape. Whether
    the grant covers a call is domain.authorisation's to decide; replay, infra.consumed_tokens'."""
    # The verified decode below parses the token (strictly) anyway, so the key is chosen from a
    # cheap parse; PyJWT's own unverified parse runs only when that fails or the token is refused,
    # so that a token PyJWT calls malformed is refused as malformed first, as ever.
    quick = _quick_parse(token)
    header, unverified_claims = quick if quick is not None else _unverified(token)

    def refuse(message: str, reason: str) -> AuthenticationError:
        if quick is not None:
            _unverified(token)
        return _fail(message, reason)

    candidates = _candidate_keys(header, unverified_claims, bundle, at, refuse)
    claims = _decode(token, candidates, audience, refuse)
    iat, exp = claims["iat"], claims["exp"]
    if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > MAX_LIFETIME_S:
        raise _fail(f"token lifetime exceeds {MAX_LIFETIME_S} seconds", "TOKEN_LIFETIME_TOO_LONG")
    if iat > time.time() + CLOCK_SKEW_S:
        raise _fail("the token was issued in the future", "TOKEN_NOT_YET_VALID")
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
        raise _fail(f"the token's jti must be 1 to {MAX_JTI_CHARS} characters", "TOKEN_INVALID")
    grant = Grant.from_claims(claims)
    return VerifiedToken(
        str(claims["iss"]), str(claims["sub"]), audience, jti, iat, exp, token, grant
    )


def _candidate_keys(
    header: dict[str, Any],
    unverified_claims: dict[str, Any],
    bundle: TrustBundle,
    at: datetime | None,
    refuse: _Refuse,
) -> list[PublicKey]:
    """The claimed issuer's keys valid at `at` (now if None) that match the header's `kid`, if any;
    refused unless the algorithm is EdDSA, the issuer a partner in the bundle, and a key is left."""
    if header.get("alg") != ALGORITHM:
        raise refuse(
            f"token algorithm {header.get('alg')!r} is not allowed; use EdDSA",
            "TOKEN_ALGORITHM_NOT_ALLOWED",
        )
    issuer = unverified_claims.get("iss")
    partner = bundle.party(str(issuer), Role.PARTNER) if isinstance(issuer, str) else None
    if partner is None:
        raise refuse(
            f"token issuer {issuer!r} is not a partner in the trust bundle", "TOKEN_ISSUER_UNKNOWN"
        )
    when = at or datetime.fromtimestamp(time.time()).astimezone()
    kid = header.get("kid")
    candidates: list[PublicKey] = [
        g.public
        for g in partner.keys
        if g.valid_at(when) and (kid is None or g.public.keyid == kid)
    ]
    if not candidates:
        raise refuse(f"no key of partner {issuer} is valid now", "TOKEN_KEY_UNKNOWN")
    return candidates


def _decode(
    token: str, candidates: list[PublicKey], audience: str, refuse: _Refuse
) -> dict[str, Any]:
    """The claims, verified by PyJWT with the first candidate key whose signature holds; every
    other failure is refused with its own reason, and no key holding is TOKEN_SIGNATURE_INVALID."""
    for key in candidates:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.crypto_key(),
                algorithms=[ALGORITHM],
                audience=audience,
                leeway=CLOCK_SKEW_S,
                options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]},
            )
            return claims
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise _fail("the token has expired", "TOKEN_EXPIRED") from None
        except jwt.InvalidAudienceError:
            raise _fail(
                f"the token is not meant for {audience}", "TOKEN_AUDIENCE_MISMATCH"
            ) from None
        except jwt.ImmatureSignatureError:
            raise _fail("the token is not valid yet", "TOKEN_NOT_YET_VALID") from None
        except jwt.MissingRequiredClaimError as e:
            raise _fail(f"the token lacks the {e.claim!r} claim", "TOKEN_CLAIM_MISSING") from None
        except jwt.PyJWTError:
            raise refuse("the token is not valid", "TOKEN_INVALID") from None
    raise refuse("the token signature does not verify", "TOKEN_SIGNATURE_INVALID")
