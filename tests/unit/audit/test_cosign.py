"""C2SP tlog-cosignature/v1: a witness's timestamped Ed25519 signature line over a checkpoint."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from audit.cosign import cosign, cosigner_key_id, verify_cosignature, witness_name
from audit.note import (
    NoteError,
    NoteVerifier,
    checkpoint_body,
    note_key_id,
    sign_note,
    verify_note,
)
from keys.ed25519 import Signer

ORIGIN = "citybroker/broker/broker-1"
NAME = witness_name("aurora")
ROOT = hashlib.sha256(b"root").digest()
BODY = checkpoint_body(ORIGIN, 42, ROOT)
TIME = 1_790_000_000


@pytest.fixture(scope="module")
def witness() -> Signer:
    return Signer.generate()


def _blob(line: str) -> bytes:
    return base64.b64decode(line.rsplit(" ", 1)[1])


def _line(name: str, blob: bytes) -> str:
    return f"\u2014 {name} {base64.b64encode(blob).decode()}"


def test_round_trip_returns_the_timestamp(witness: Signer) -> None:
    line = cosign(BODY, NAME, witness, TIME)
    assert verify_cosignature(line, BODY, NAME, witness.public) == TIME


def test_the_line_is_the_c2sp_encoding(witness: Signer) -> None:
    """'— <name> base64(key id || u64 big-endian time || Ed25519 signature)', with the key id
    SHA-256(name || 0x0A || 0x04 || key)[:4] and the signed message 'cosignature/v1\\ntime T\\n' || body."""
    line = cosign(BODY, NAME, witness, TIME)
    assert line.startswith(f"\u2014 {NAME} ")
    key_id = hashlib.sha256(NAME.encode() + b"\n\x04" + witness.public.raw).digest()[:4]
    assert cosigner_key_id(NAME, witness.public) == key_id
    message = f"cosignature/v1\ntime {TIME}\n".encode() + BODY.encode()
    assert _blob(line) == key_id + struct.pack(">Q", TIME) + witness.sign(message)
    witness.public.crypto_key().verify(_blob(line)[12:], message)  # raises if not


def test_a_cosignature_is_not_a_note_signature(witness: Signer) -> None:
    """A cosigned checkpoint still verifies with the log's key (the witness line is an unknown key
    to it), and the witness's line does not pass as a plain note signature by the same key."""
    log_key = Signer.generate()
    note = sign_note(BODY, ORIGIN, log_key)
    cosigned = note + cosign(BODY, NAME, witness, TIME) + "\n"
    assert verify_note(cosigned, [NoteVerifier.for_key(ORIGIN, log_key.public)]) == BODY
    assert cosigner_key_id(NAME, witness.public) != note_key_id(NAME, witness.public.raw)
    with pytest.raises(NoteError):
        verify_note(
            BODY + "\n" + cosign(BODY, NAME, witness, TIME) + "\n",
            [NoteVerifier.for_key(NAME, witness.public)],
        )


def test_another_witness_name_is_rejected(witness: Signer) -> None:
    line = cosign(BODY, NAME, witness, TIME)
    with pytest.raises(NoteError):
        verify_cosignature(line, BODY, witness_name("borealis"), witness.public)
    # Renaming the line keeps the key id of the first name: still rejected.
    renamed = _line(witness_name("borealis"), _blob(line))
    with pytest.raises(NoteError):
        verify_cosignature(renamed, BODY, witness_name("borealis"), witness.public)


def test_another_key_is_rejected(witness: Signer) -> None:
    line = cosign(BODY, NAME, witness, TIME)
    with pytest.raises(NoteError):
        verify_cosignature(line, BODY, NAME, Signer.generate().public)
    # Same key id (computed for the right key) but signed by another key.
    forged = cosign(BODY, NAME, Signer.generate(), TIME)
    blob = cosigner_key_id(NAME, witness.public) + _blob(forged)[4:]
    with pytest.raises(NoteError):
        verify_cosignature(_line(NAME, blob), BODY, NAME, witness.public)


@pytest.mark.parametrize(
    "body",
    [
        checkpoint_body(ORIGIN, 43, ROOT),
        checkpoint_body(ORIGIN, 42, hashlib.sha256(b"other").digest()),
        checkpoint_body("citybroker/broker/broker-2", 42, ROOT),
        BODY + "extension\n",
    ],
    ids=["size", "root", "origin", "extension"],
)
def test_another_body_is_rejected(witness: Signer, body: str) -> None:
    line = cosign(BODY, NAME, witness, TIME)
    with pytest.raises(NoteError):
        verify_cosignature(line, body, NAME, witness.public)


@pytest.mark.parametrize("delta", [1, -1, 1 << 32])
def test_a_changed_timestamp_is_rejected(witness: Signer, delta: int) -> None:
    blob = _blob(cosign(BODY, NAME, witness, TIME))
    moved = blob[:4] + struct.pack(">Q", TIME + delta) + blob[12:]
    with pytest.raises(NoteError):
        verify_cosignature(_line(NAME, moved), BODY, NAME, witness.public)


def test_a_timestamp_out_of_range_is_rejected(witness: Signer) -> None:
    for t in (-1, 1 << 63):
        with pytest.raises(NoteError):
            cosign(BODY, NAME, witness, t)
    # Even validly signed, a time with the top bit set is not a cosignature/v1 timestamp.
    t = 1 << 63
    sig = witness.sign(f"cosignature/v1\ntime {t}\n".encode() + BODY.encode())
    blob = cosigner_key_id(NAME, witness.public) + struct.pack(">Q", t) + sig
    with pytest.raises(NoteError):
        verify_cosignature(_line(NAME, blob), BODY, NAME, witness.public)


def test_every_changed_byte_of_the_signature_blob_is_rejected(witness: Signer) -> None:
    blob = _blob(cosign(BODY, NAME, witness, TIME))
    assert len(blob) == 4 + 8 + 64
    for i in range(len(blob)):
        changed = bytearray(blob)
        changed[i] ^= 0x01
        with pytest.raises(NoteError):
            verify_cosignature(_line(NAME, bytes(changed)), BODY, NAME, witness.public)
    for cut in (blob[:-1], blob + b"\0", blob[:4]):
        with pytest.raises(NoteError):
            verify_cosignature(_line(NAME, cut), BODY, NAME, witness.public)


@pytest.mark.parametrize(
    "line",
    [
        "",
        f"- {NAME} AAAA",
        f"\u2014 {NAME}",
        f"\u2014 {NAME} not base64!",
        f"\u2014  {NAME} AAAA",
    ],
)
def test_malformed_lines_are_rejected(witness: Signer, line: str) -> None:
    with pytest.raises(NoteError):
        verify_cosignature(line, BODY, NAME, witness.public)


def test_a_bad_witness_name_cannot_cosign(witness: Signer) -> None:
    for name in ("", "has space", "plus+sign", "tab\tname"):
        with pytest.raises(NoteError):
            cosign(BODY, name, witness, TIME)


def test_witness_names_follow_the_city() -> None:
    assert witness_name("aurora") == "citybroker/witness/aurora"
