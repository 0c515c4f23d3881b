"""Any single flipped byte in a DSSE envelope's payload, payload type or signature is rejected."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keys import dsse
from keys.ed25519 import Signer
from keys.errors import SignatureError

SIGNER = Signer.generate()
THING = "result"

# Integers within the I-JSON range, the only ones RFC 8785 canonicalises.
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=5)


def lookup(kid: str) -> Any:
    return SIGNER.public if kid == SIGNER.keyid else None


def flip(data: bytes, index: int, mask: int) -> bytes:
    i = index % len(data)
    return data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]


def rejected(env: dsse.Envelope) -> bool:
    try:
        dsse.verify(env, THING, lookup)
    except SignatureError:
        return True
    return False


masks = st.integers(1, 255)


@settings(max_examples=100)
@given(payloads)
def test_round_trip(payload: dict[str, Any]) -> None:
    env = dsse.Envelope.from_json(dsse.sign(THING, payload, SIGNER).to_json())
    parsed, good = dsse.verify(env, THING, lookup)
    assert good == {SIGNER.keyid}
    assert dsse.canonical(parsed) == dsse.canonical(payload)


@settings(max_examples=100)
@given(payloads, st.integers(0), masks)
def test_flipped_payload_byte_is_rejected(payload: dict[str, Any], index: int, mask: int) -> None:
    env = dsse.sign(THING, payload, SIGNER)
    tampered = dsse.Envelope(env.payload_type, flip(env.payload, index, mask), env.signatures)
    assert rejected(tampered)


@settings(max_examples=100)
@given(payloads, st.integers(0), masks)
def test_flipped_payload_type_byte_is_rejected(
    payload: dict[str, Any], index: int, mask: int
) -> None:
    env = dsse.sign(THING, payload, SIGNER)
    ptype = flip(env.payload_type.encode("latin-1"), index, mask).decode("latin-1")
    tampered = dsse.Envelope(ptype, env.payload, env.signatures)
    assert rejected(tampered)
    # Not only the type check: the signature itself no longer covers the envelope.
    assert dsse.verified_keyids(tampered, lookup) == set()


@settings(max_examples=100)
@given(payloads, st.integers(0), masks)
def test_flipped_signature_byte_is_rejected(payload: dict[str, Any], index: int, mask: int) -> None:
    env = dsse.sign(THING, payload, SIGNER)
    sig = env.signatures[0]
    tampered = dsse.Envelope(
        env.payload_type, env.payload, (dsse.Signature(sig.keyid, flip(sig.sig, index, mask)),)
    )
    assert rejected(tampered)
