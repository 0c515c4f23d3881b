"""DSSE envelopes over RFC 8785 canonical JSON.

The payload is canonicalised once and kept as bytes; verification checks signatures over the exact
bytes before anything parses them (`verify` returns the parsed payload only after that).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

from keys import bounded_json
from keys.ed25519 import PublicKey, Signer
from keys.errors import SignatureError

MEDIA_PREFIX = "application/vnd.citybroker."


def media_type(thing: str) -> str:
    """The DSSE payload type of a citybroker statement: application/vnd.citybroker.<thing>+json."""
    return f"{MEDIA_PREFIX}{thing}+json"


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON. Values the standard library's encoder writes canonically (see
    `_plain`) take its C fast path; anything else goes through `rfc8785`."""
    try:
        plain = _plain(obj)
    except _NotPlain:
        return rfc8785.dumps(obj)
    return json.dumps(plain, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


_SAFE_INT = 2**53 - 1  # RFC 8785's integer domain; rfc8785 refuses larger magnitudes


class _NotPlain(Exception):
    pass


def _plain(obj: Any) -> Any:
    """`obj` as `json.dumps` writes byte for byte as RFC 8785 does, or _NotPlain. Exact built-in
    types only; ASCII strings and keys (the same escapes, and key order by code point is order by
    UTF-16 unit); integers in the safe domain; whole floats in that domain as integers (ECMAScript
    writes 3.0 as 3); other finite floats not below 1e-4 in magnitude (there Python's repr and
    ECMAScript's number format agree: the same shortest round-trip digits, no exponent)."""
    t = type(obj)
    if t is str:
        if obj.isascii():
            return obj
    elif t is int:
        if -_SAFE_INT <= obj <= _SAFE_INT:
            return obj
    elif t is dict:
        out = {}
        for k, v in obj.items():
            if type(k) is not str or not k.isascii():
                raise _NotPlain
            out[k] = _plain(v)
        return out
    elif t is list or t is tuple:
        return [_plain(v) for v in obj]
    elif t is float:
        if math.isfinite(obj):
            if not obj.is_integer():
                if abs(obj) >= 1e-4:
                    return obj
            elif -_SAFE_INT <= obj <= _SAFE_INT:
                return int(obj)
    elif obj is None or t is bool:
        return obj
    raise _NotPlain


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding of type and payload: the exact bytes a signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


# Bounds on what an envelope may hold, checked when one is made from untrusted input and before
# any signature is verified: no statement of ours carries more than a few signatures, and each
# verification costs real CPU (30,000 signatures took 3 s).
MAX_SIGNATURES = 16
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
# The JSON form: the payload in base64 plus the signatures.
MAX_JSON_BYTES = MAX_PAYLOAD_BYTES * 4 // 3 + 64 * 1024


def _too_many_signatures(count: int) -> SignatureError:
    return SignatureError(
        f"an envelope carries at most {MAX_SIGNATURES} signatures, this one {count}",
        reason="TOO_MANY_SIGNATURES",
    )


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if len(self.signatures) > MAX_SIGNATURES:
            raise _too_many_signatures(len(self.signatures))
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise SignatureError(
                f"an envelope's payload is at most {MAX_PAYLOAD_BYTES} bytes, "
                f"this one {len(self.payload)}",
                reason="PAYLOAD_TOO_LARGE",
            )

    def to_json(self) -> bytes:
        """The envelope in DSSE JSON form (base64 payload and signatures), as canonical JSON bytes."""
        return canonical(
            {
                "payloadType": self.payload_type,
                "payload": base64.b64encode(self.payload).decode(),
                "signatures": [
                    {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()}
                    for s in self.signatures
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        """The envelope of DSSE JSON, signatures unchecked; SignatureError (ENVELOPE_MALFORMED) if not one."""
        try:
            obj = bounded_json.loads(data, "a DSSE envelope", MAX_JSON_BYTES)
            if len(obj["signatures"]) > MAX_SIGNATURES:  # before decoding any of them
                raise _too_many_signatures(len(obj["signatures"]))
            sigs = tuple(
                Signature(str(s["keyid"]), base64.b64decode(s["sig"], validate=True))
                for s in obj["signatures"]
            )
            return cls(
                str(obj["payloadType"]), base64.b64decode(obj["payload"], validate=True), sigs
            )
        except bounded_json.JsonRefused as e:
            raise SignatureError(e.message, reason=e.reason) from None
        except (ValueError, KeyError, TypeError) as e:
            raise SignatureError(f"not a DSSE envelope: {e}", reason="ENVELOPE_MALFORMED") from None

    def countersigned(self, signer: Signer) -> Envelope:
        """A copy with `signer`'s signature over the same payload appended; the others are not checked."""
        pinned = signer.in_use()
        sig = Signature(pinned.keyid, pinned.sign(pae(self.payload_type, self.payload)))
        return Envelope(self.payload_type, self.payload, (*self.signatures, sig))


def sign(thing: str, payload: Mapping[str, Any], *signers: Signer) -> Envelope:
    """An envelope over the canonical JSON of `payload`, typed for `thing`, signed by each signer in order."""
    body = canonical(payload)
    ptype = media_type(thing)
    message = pae(ptype, body)
    pinned = [s.in_use() for s in signers]  # a key rotating meanwhile cannot split id and signature
    return Envelope(ptype, body, tuple(Signature(s.keyid, s.sign(message)) for s in pinned))


KeyLookup = Callable[[str], PublicKey | None]


def verified_keyids(envelope: Envelope, lookup: KeyLookup) -> set[str]:
    """Key ids whose signature over this envelope is valid; unknown key ids are ignored."""
    message = pae(envelope.payload_type, envelope.payload)
    good = set()
    for s in envelope.signatures:
        key = lookup(s.keyid)
        if key is not None and key.keyid == s.keyid and key.verify(s.sig, message):
            good.add(s.keyid)
    return good


def verify(
    envelope: Envelope, thing: str, lookup: KeyLookup, required: Iterable[str] = ()
) -> tuple[dict[str, Any], set[str]]:
    """Verify, then parse. At least one valid signature is needed, plus every key id in `required`.

    Returns the parsed payload and the key ids that verified.
    """
    good = verify_signatures(envelope, thing, lookup, required)
    try:
        payload = bounded_json.loads(envelope.payload, f"the {thing} payload")
    except bounded_json.JsonRefused as e:
        raise SignatureError(e.message, reason=e.reason) from None
    except ValueError:
        raise SignatureError(f"{thing} payload is not JSON", reason="PAYLOAD_MALFORMED") from None
    if not isinstance(payload, dict):
        raise SignatureError(f"{thing} payload is not an object", reason="PAYLOAD_MALFORMED")
    return payload, good


def verify_signatures(
    envelope: Envelope, thing: str, lookup: KeyLookup, required: Iterable[str] = ()
) -> set[str]:
    """`verify` without the parse, for a caller that already holds the payload parsed from these
    exact bytes: the payload type and signatures are checked the same way. Returns the key ids
    that verified."""
    if envelope.payload_type != media_type(thing):
        raise SignatureError(
            f"expected a {media_type(thing)} envelope, got {envelope.payload_type!r}",
            reason="PAYLOAD_TYPE_MISMATCH",
        )
    good = verified_keyids(envelope, lookup)
    missing = set(required) - good
    if not good or missing:
        raise SignatureError(
            f"{thing} envelope lacks a valid signature from a trusted key",
            reason="SIGNATURE_INVALID",
        )
    return good
