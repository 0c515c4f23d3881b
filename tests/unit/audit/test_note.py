"""C2SP signed-note and tlog-checkpoint: the spec's example, round trips and malformed notes."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.note import (
    NoteError,
    NoteVerifier,
    checkpoint_body,
    note_key_id,
    parse_checkpoint,
    parse_verifier_key,
    sign_note,
    verifier_key,
    verify_note,
)
from keys.ed25519 import Signer

VECTORS = Path(__file__).resolve().parents[3].parent / "shared" / "vectors" / "signed-note"
ROOT = bytes(range(32))
# Hypothesis runs a test many times; a key made once keeps the examples fast.
_PROPERTY_SIGNER = Signer.generate()


@pytest.fixture(scope="module")
def example() -> tuple[bytes, NoteVerifier]:
    if not VECTORS.is_dir():
        pytest.skip(f"signed-note vectors not found at {VECTORS}")
    note = (VECTORS / "example.note").read_bytes()
    verifier = parse_verifier_key((VECTORS / "example.vkey").read_text())
    return note, verifier


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate()


def test_example_vkey_verifies_example_note(example: tuple[bytes, NoteVerifier]) -> None:
    note, verifier = example
    assert verifier.name == "example.com/foo"
    assert verify_note(note, [verifier]) == "This is an example message.\n"
    assert verify_note(note.decode(), [verifier]) == "This is an example message.\n"


def test_example_vkey_round_trips(example: tuple[bytes, NoteVerifier]) -> None:
    _, verifier = example
    assert verifier.vkey == (VECTORS / "example.vkey").read_text().strip()


@pytest.mark.parametrize("mask", [0x01, 0x02, 0x10, 0x20, 0x80])
def test_any_flipped_byte_in_example_fails(example: tuple[bytes, NoteVerifier], mask: int) -> None:
    note, verifier = example
    for i in range(len(note)):
        tampered = bytearray(note)
        tampered[i] ^= mask
        with pytest.raises(NoteError):
            verify_note(bytes(tampered), [verifier])


def test_sign_verify_round_trip(signer: Signer) -> None:
    body = checkpoint_body("city.example/log", 42, ROOT)
    note = sign_note(body, "city.example/log", signer)
    verifier = parse_verifier_key(verifier_key("city.example/log", signer.public))
    assert verify_note(note, [verifier]) == body
    assert parse_checkpoint(body) == ("city.example/log", 42, ROOT)
    signature_line = note.splitlines()[-1]
    assert signature_line.startswith("\u2014 city.example/log ")
    blob = base64.b64decode(signature_line.split(" ")[-1])
    assert blob[:4] == note_key_id("city.example/log", signer.public.raw)
    assert len(blob) == 4 + 64


@given(
    text=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=["Cs"])
        | st.just("\n"),
        max_size=200,
    ),
    flip=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_round_trip_and_flipped_bit_property(text: str, flip: int, bit: int) -> None:
    signer = _PROPERTY_SIGNER
    body = text + "\n"
    note = sign_note(body, "prop.example/key", signer)
    verifier = NoteVerifier.for_key("prop.example/key", signer.public)
    assert verify_note(note, [verifier]) == body
    raw = bytearray(note.encode())
    raw[flip % len(raw)] ^= 1 << bit
    try:
        tampered_body = verify_note(bytes(raw), [verifier])
    except NoteError:
        return
    # A flip can only survive where it cannot change what was signed: there is none.
    pytest.fail(f"flipped note verified with body {tampered_body!r}")


def test_cosignature_from_unknown_key_is_ignored(signer: Signer) -> None:
    other = Signer.generate()
    body = "hello\n"
    note = sign_note(body, "a.example/k", signer)
    cosigned = note + sign_note(body, "witness.example/w", other).split("\n\n")[-1]
    assert cosigned.count("\u2014") == 2
    assert verify_note(cosigned, [NoteVerifier.for_key("a.example/k", signer.public)]) == body
    assert verify_note(cosigned, [NoteVerifier.for_key("witness.example/w", other.public)]) == body


def test_no_trusted_signature_is_rejected(signer: Signer) -> None:
    note = sign_note("hello\n", "a.example/k", signer)
    stranger = NoteVerifier.for_key("b.example/k", Signer.generate().public)
    with pytest.raises(NoteError, match="no signature from a trusted key"):
        verify_note(note, [stranger])
    with pytest.raises(NoteError, match="no signature from a trusted key"):
        verify_note(note, [])


def test_same_name_other_key_is_unknown_not_failing(signer: Signer) -> None:
    note = sign_note("hello\n", "a.example/k", signer)
    impostor = NoteVerifier.for_key("a.example/k", Signer.generate().public)
    with pytest.raises(NoteError, match="no signature from a trusted key"):
        verify_note(note, [impostor])


def test_known_key_with_bad_signature_rejects_whole_note(signer: Signer) -> None:
    verifier = NoteVerifier.for_key("a.example/k", signer.public)
    good = sign_note("hello\n", "a.example/k", signer)
    forged = sign_note("other\n", "a.example/k", signer).split("\n\n")[-1]
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(good + forged, [verifier])


def test_verifier_key_whose_base64_contains_plus() -> None:
    public = next(
        key.public
        for key in (Signer.generate() for _ in range(1000))
        if "+" in verifier_key("a.example/k", key.public).split("+", 2)[2]
    )
    verifier = parse_verifier_key(verifier_key("a.example/k", public))
    assert verifier.public == public


def test_verifier_key_with_wrong_hash_is_rejected(signer: Signer) -> None:
    name, key_hash, blob = verifier_key("a.example/k", signer.public).split("+", 2)
    wrong = f"{(int(key_hash, 16) ^ 1):08x}"
    with pytest.raises(NoteError, match="does not match"):
        parse_verifier_key(f"{name}+{wrong}+{blob}")


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "no-plus-signs",
        "a+b",
        "a+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k+extra",
        "+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903g+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
        "example.com/foo+530d903a+AukyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2l",
        "example com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    ],
)
def test_malformed_verifier_keys(vkey: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(vkey)


def _good_note(signer: Signer) -> str:
    return sign_note("line one\n\nline three\n", "a.example/k", signer)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda n: n.replace("\n\n\u2014", "\n\u2014"), "signature|blank line"),
        (lambda n: n.split("\u2014")[0], "no signature lines"),
        (lambda n: n[:-1], "end with a newline"),
        (lambda n: n.replace("\u2014 ", "- "), "em dash"),
        (lambda n: n.replace("\u2014 a.example/k ", "\u2014 a.example/k  "), "key name"),
        (lambda n: n.replace("\u2014 a.example/k ", "\u2014 a.example+k "), "plus sign"),
        (lambda n: n.replace("line one", "line\tone"), "control character"),
        (lambda n: n.replace("line one", "line\rone"), "control character"),
        (lambda n: n[:-3] + "!!\n", "base64"),
        (lambda n: n + "\n", "blank line|signature"),
        (lambda n: n.rsplit(" ", 1)[0] + " AAAA\n", "too short"),
    ],
)
def test_malformed_notes(signer: Signer, mangle: Callable[[str], str], message: str) -> None:
    verifier = NoteVerifier.for_key("a.example/k", signer.public)
    note = _good_note(signer)
    assert verify_note(note, [verifier]) == "line one\n\nline three\n"
    with pytest.raises(NoteError, match=message):
        verify_note(mangle(note), [verifier])


def test_invalid_utf8_is_rejected(signer: Signer) -> None:
    verifier = NoteVerifier.for_key("a.example/k", signer.public)
    raw = _good_note(signer).encode().replace(b"line one", b"line \xff")
    with pytest.raises(NoteError, match="UTF-8"):
        verify_note(raw, [verifier])


def test_sign_note_refuses_bad_input(signer: Signer) -> None:
    with pytest.raises(NoteError, match="newline"):
        sign_note("no newline", "a.example/k", signer)
    with pytest.raises(NoteError, match="key name"):
        sign_note("x\n", "has space", signer)
    with pytest.raises(NoteError, match="key name"):
        sign_note("x\n", "", signer)


def test_checkpoint_body_format() -> None:
    body = checkpoint_body("example.com/behind-the-sofa", 20852163, ROOT)
    assert body == f"example.com/behind-the-sofa\n20852163\n{base64.b64encode(ROOT).decode()}\n"
    assert parse_checkpoint(checkpoint_body("o", 0, ROOT)) == ("o", 0, ROOT)


def test_checkpoint_extension_lines_are_allowed() -> None:
    body = checkpoint_body("o", 7, ROOT) + "ext one\next two\n"
    assert parse_checkpoint(body) == ("o", 7, ROOT)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "o\n7\n",
        "o\n7\n" + base64.b64encode(ROOT).decode(),
        "\n7\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n07\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n-7\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n7a\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n\u0667\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n" + "9" * 30 + "\n" + base64.b64encode(ROOT).decode() + "\n",
        "o\n7\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
        "o\n7\nnot base64!\n",
        "o\n7\n" + base64.b64encode(ROOT).decode() + "\n\n",
    ],
)
def test_malformed_checkpoints(body: str) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(body)


def test_checkpoint_body_refuses_bad_input() -> None:
    with pytest.raises(NoteError):
        checkpoint_body("", 1, ROOT)
    with pytest.raises(NoteError):
        checkpoint_body("two\nlines", 1, ROOT)
    with pytest.raises(NoteError):
        checkpoint_body("o", -1, ROOT)
    with pytest.raises(NoteError):
        checkpoint_body("o", 1, ROOT[:5])


def test_note_error_is_a_verification_error() -> None:
    from domain.errors import VerificationError

    with pytest.raises(VerificationError) as raised:
        verify_note("x\n\n", [])
    assert raised.value.reason == "NOTE_INVALID"
