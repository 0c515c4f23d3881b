"""DSSE envelopes: PAE, sign/verify, required signers, and verify-before-parse."""

from __future__ import annotations

import base64
import json

import pytest

from keys import dsse
from keys.ed25519 import PublicKey, Signer
from keys.errors import SignatureError


def lookup_for(*signers: Signer) -> dsse.KeyLookup:
    keys = {s.keyid: s.public for s in signers}
    return keys.get


def signed_raw(thing: str, payload: bytes, *signers: Signer) -> dsse.Envelope:
    """An envelope over arbitrary payload bytes (dsse.sign only takes JSON objects)."""
    ptype = dsse.media_type(thing)
    message = dsse.pae(ptype, payload)
    return dsse.Envelope(
        ptype, payload, tuple(dsse.Signature(s.keyid, s.sign(message)) for s in signers)
    )


def test_pae_matches_the_dsse_spec_example() -> None:
    # From the DSSE v1 protocol description: PAE("http://example.com/HelloWorld", "hello world").
    assert (
        dsse.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert dsse.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "


def test_media_type() -> None:
    assert dsse.media_type("result") == "application/vnd.citybroker.result+json"


def test_sign_then_verify_returns_the_payload_and_signer() -> None:
    signer = Signer.generate()
    env = dsse.sign("result", {"b": 2, "a": [1, "x"]}, signer)

    payload, good = dsse.verify(env, "result", lookup_for(signer))

    assert payload == {"a": [1, "x"], "b": 2}
    assert good == {signer.keyid}
    assert env.payload == b'{"a":[1,"x"],"b":2}'  # RFC 8785 canonical form, stored as bytes


def test_envelope_json_round_trip() -> None:
    a, b = Signer.generate(), Signer.generate()
    env = dsse.sign("query", {"q": 1}, a).countersigned(b)
    again = dsse.Envelope.from_json(env.to_json())
    assert again == env
    obj = json.loads(env.to_json())
    assert set(obj) == {"payloadType", "payload", "signatures"}
    assert base64.b64decode(obj["payload"]) == env.payload
    _, good = dsse.verify(again, "query", lookup_for(a, b), required=[a.keyid, b.keyid])
    assert good == {a.keyid, b.keyid}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"payloadType": "x"}',
        b'{"payloadType":"x","payload":"!!","signatures":[]}',
    ],
)
def test_from_json_rejects_malformed_envelopes(data: bytes) -> None:
    with pytest.raises(SignatureError) as e:
        dsse.Envelope.from_json(data)
    assert e.value.reason == "ENVELOPE_MALFORMED"


def test_verify_refuses_another_payload_type() -> None:
    signer = Signer.generate()
    env = dsse.sign("query", {"q": 1}, signer)
    with pytest.raises(SignatureError) as e:
        dsse.verify(env, "result", lookup_for(signer))
    assert e.value.reason == "PAYLOAD_TYPE_MISMATCH"


def test_verify_requires_every_required_key() -> None:
    a, b = Signer.generate(), Signer.generate()
    only_a = dsse.sign("agreement", {"x": 1}, a)
    lookup = lookup_for(a, b)

    with pytest.raises(SignatureError) as e:
        dsse.verify(only_a, "agreement", lookup, required=[a.keyid, b.keyid])
    assert e.value.reason == "SIGNATURE_INVALID"

    both = only_a.countersigned(b)
    _, good = dsse.verify(both, "agreement", lookup, required=[a.keyid, b.keyid])
    assert good == {a.keyid, b.keyid}


def test_required_key_with_a_bad_signature_fails() -> None:
    a, b = Signer.generate(), Signer.generate()
    env = dsse.sign("agreement", {"x": 1}, a)
    forged = dsse.Envelope(
        env.payload_type, env.payload, (*env.signatures, dsse.Signature(b.keyid, b"\x00" * 64))
    )
    with pytest.raises(SignatureError):
        dsse.verify(forged, "agreement", lookup_for(a, b), required=[b.keyid])


def test_unknown_key_ids_are_ignored() -> None:
    known, stranger = Signer.generate(), Signer.generate()
    env = dsse.sign("result", {"x": 1}, stranger, known)

    _, good = dsse.verify(env, "result", lookup_for(known))

    assert good == {known.keyid}


def test_only_unknown_signers_fail() -> None:
    known, stranger = Signer.generate(), Signer.generate()
    env = dsse.sign("result", {"x": 1}, stranger)
    with pytest.raises(SignatureError) as e:
        dsse.verify(env, "result", lookup_for(known))
    assert e.value.reason == "SIGNATURE_INVALID"


def test_no_signatures_fail() -> None:
    env = dsse.sign("result", {"x": 1})
    with pytest.raises(SignatureError):
        dsse.verify(env, "result", lambda _kid: None)


def test_a_key_listed_under_another_id_is_not_trusted() -> None:
    """A lookup that maps key id X to a key whose id is not X must not make X's signature count."""
    signer, other = Signer.generate(), Signer.generate()
    env = dsse.sign("result", {"x": 1}, signer)
    relabelled = dsse.Envelope(
        env.payload_type, env.payload, (dsse.Signature(other.keyid, env.signatures[0].sig),)
    )

    def confused(kid: str) -> PublicKey | None:
        return signer.public if kid == other.keyid else None

    with pytest.raises(SignatureError):
        dsse.verify(relabelled, "result", confused)


def test_signature_is_checked_before_the_payload_is_parsed() -> None:
    signer = Signer.generate()

    signed_garbage = signed_raw("result", b"{not json", signer)
    with pytest.raises(SignatureError) as e:
        dsse.verify(signed_garbage, "result", lookup_for(signer))
    assert e.value.reason == "PAYLOAD_MALFORMED"

    unsigned_garbage = dsse.Envelope(dsse.media_type("result"), b"{not json", ())
    with pytest.raises(SignatureError) as e:
        dsse.verify(unsigned_garbage, "result", lookup_for(signer))
    assert e.value.reason == "SIGNATURE_INVALID"

    badly_signed_garbage = dsse.Envelope(
        dsse.media_type("result"), b"{not json", (dsse.Signature(signer.keyid, b"\x01" * 64),)
    )
    with pytest.raises(SignatureError) as e:
        dsse.verify(badly_signed_garbage, "result", lookup_for(signer))
    assert e.value.reason == "SIGNATURE_INVALID"


def test_signed_json_that_is_not_an_object_is_malformed() -> None:
    signer = Signer.generate()
    env = signed_raw("result", b"[1,2]", signer)
    with pytest.raises(SignatureError) as e:
        dsse.verify(env, "result", lookup_for(signer))
    assert e.value.reason == "PAYLOAD_MALFORMED"
