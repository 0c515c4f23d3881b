"""Partner access tokens: short-lived, single-use EdDSA JWTs.

A token names its issuer (the partner, as listed in the trust bundle), subject, audience (the broker),
and a unique `jti`. Lifetimes over five minutes are refused, which bounds how long a replay cache must
remember a `jti`.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt

from domain.errors import AuthenticationError
from keys.ed25519 import PublicKey, Signer
from keys.trust import Role, TrustBundle

MAX_LIFETIME_S = 300
CLOCK_SKEW_S = 30
ALGORITHM = "EdDSA"


def issue(
    signer: Signer, issuer: str, audience: str, lifetime_s: int = 120, subject: str | None = None
) -> str:
    """A JWT signed by `signer` (kid: its key id), fresh jti; ValueError unless 0 < lifetime_s <= 300."""
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
    """Check signature, algorithm, issuer, audience, expiry and lifetime. Replay is `ReplayCache`'s job."""
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
    return VerifiedToken(
        str(claims["iss"]), str(claims["sub"]), audience, str(claims["jti"]), iat, exp, token
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


class ReplayCache:
    """Remembers each `jti` until its token expires (plus skew); a second use is refused.

    Bounded in time by MAX_LIFETIME_S, so memory is bounded by the token rate.
    """

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def consume(self, token: VerifiedToken, use: str = "") -> None:
        """Refuse a second use; `use` separates kinds of use one token may have once each
        (a broker's dry-run plan and the query it prepares)."""
        now = time.time()
        key = f"{token.issuer}\x00{token.jti}\x00{use}"
        with self._lock:
            if now >= self._next_sweep:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
                self._next_sweep = now + 10
            if key in self._seen:
                raise _fail("the token has already been used", "TOKEN_REPLAYED")
            self._seen[key] = token.expires_at + CLOCK_SKEW_S
