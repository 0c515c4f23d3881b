"""C2SP signed-note (Ed25519) and tlog-checkpoint: how a log publishes its signed head.

A note is a text ending in a newline, a blank line, then one signature line per key:
``— <key name> base64(key ID || Ed25519 signature)``. A checkpoint is a note whose text is
``<origin>\\n<tree size>\\n<base64 root>\\n`` followed by optional extension lines.

Pure: text and keys in, text or NoteError out; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import string
from collections.abc import Iterable
from dataclasses import dataclass

from domain.errors import VerificationError
from keys.ed25519 import PublicKey, Signer

ED25519_TYPE = 0x01
SIG_PREFIX = "\u2014 "
KEY_ID_SIZE = 4
ED25519_SIG_SIZE = 64
HASH_SIZE = 32

# The spec requires accepting at least 16 signatures; anything far beyond is abuse, not cosigning.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20


class NoteError(VerificationError):
    """A signed note or checkpoint is malformed or carries no verifying signature."""

    default_reason = "NOTE_INVALID"


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted note key: its name, the 4-byte key ID derived from it, and the Ed25519 key."""

    name: str
    key_id: bytes
    public: PublicKey

    @classmethod
    def for_key(cls, name: str, public: PublicKey) -> NoteVerifier:
        """The verifier of `public`'s signatures under key name `name`."""
        check_key_name(name)
        return cls(name, note_key_id(name, public.raw), public)

    @property
    def vkey(self) -> str:
        """The ``<name>+<hex key ID>+<base64(0x01 || public key)>`` text form of this key."""
        blob = base64.b64encode(bytes([ED25519_TYPE]) + self.public.raw).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"


def note_key_id(name: str, public_raw: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4], the C2SP Ed25519 key ID."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ED25519_TYPE]) + public_raw).digest()
    return digest[:KEY_ID_SIZE]


def verifier_key(name: str, public: PublicKey) -> str:
    """The vkey text of `public` under `name`."""
    return NoteVerifier.for_key(name, public).vkey


def check_key_name(name: str) -> None:
    """Refuse a key name the signed-note format cannot carry."""
    if not name:
        raise NoteError("key name is empty")
    if any(c.isspace() or c == "+" or ord(c) < 0x20 for c in name):
        raise NoteError(f"key name {name!r} contains a space, a plus sign or a control character")


def _check_text(text: str, what: str) -> None:
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise NoteError(f"{what} contains the control character U+{ord(c):04X}")


def _b64decode(text: str, what: str) -> bytes:
    # Canonical form only: otherwise the unused low bits of the last character let one signature
    # or key be spelled several ways, and a changed byte in a note could still verify.
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode() != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse a ``<name>+<hex key ID>+<base64(0x01 || pubkey)>`` verifier key; check its key ID."""
    # The base64 key may itself contain "+"; the name and the key id never do.
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError("verifier key must have the form <name>+<hex key id>+<base64 key>")
    name, hex_id, blob_b64 = parts
    check_key_name(name)
    if len(hex_id) != 2 * KEY_ID_SIZE or any(c not in string.hexdigits for c in hex_id):
        raise NoteError(f"verifier key id {hex_id!r} is not {2 * KEY_ID_SIZE} hex digits")
    claimed_id = bytes.fromhex(hex_id)
    blob = _b64decode(blob_b64, "verifier key")
    if not blob or blob[0] != ED25519_TYPE:
        raise NoteError("verifier key is not an Ed25519 (type 0x01) key")
    if len(blob) != 1 + 32:
        raise NoteError("verifier key does not hold a 32-byte Ed25519 public key")
    verifier = NoteVerifier(name, note_key_id(name, blob[1:]), PublicKey(blob[1:]))
    if verifier.key_id != claimed_id:
        raise NoteError(f"verifier key id {hex_id} does not match the key and name")
    return verifier


def sign_note(body: str, name: str, signer: Signer) -> str:
    """Sign `body` (which must end in a newline) and return the complete note with one signature."""
    _check_body(body)
    check_key_name(name)
    signer = signer.in_use()  # signature and key id from one key, even while it rotates
    signature = signer.sign(body.encode())
    blob = note_key_id(name, signer.public.raw) + signature
    return f"{body}\n{SIG_PREFIX}{name} {base64.b64encode(blob).decode()}\n"


def _check_body(body: str) -> None:
    if not body.endswith("\n"):
        raise NoteError("note text does not end with a newline")
    _check_text(body, "note text")


def verify_note(note_text: str | bytes, verifiers: Iterable[NoteVerifier]) -> str:
    """Return the note's text if a trusted key signed it; raise NoteError otherwise.

    Signatures from unknown keys are ignored, as the spec requires, so witnesses can cosign and
    keys can rotate. A signature from a known key that fails rejects the whole note: someone is
    presenting a forgery, and the rest of the note should not be trusted either.
    """
    if isinstance(note_text, bytes):
        if len(note_text) > MAX_NOTE_BYTES:
            raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
        try:
            note_text = note_text.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    try:
        raw = note_text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note is not valid UTF-8") from None
    if len(raw) > MAX_NOTE_BYTES:
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    _check_text(note_text, "note")
    split = note_text.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    body, sig_block = note_text[: split + 1], note_text[split + 2 :]
    if not sig_block:
        raise NoteError("note has no signature lines")
    if not sig_block.endswith("\n"):
        raise NoteError("note does not end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")

    trusted: dict[tuple[str, bytes], NoteVerifier] = {(v.name, v.key_id): v for v in verifiers}
    body_bytes = body.encode("utf-8")
    verified = 0
    for number, line in enumerate(lines, start=1):
        name, blob = parse_signature_line(line, number)
        verifier = trusted.get((name, blob[:KEY_ID_SIZE]))
        if verifier is None:
            continue
        signature = blob[KEY_ID_SIZE:]
        if len(signature) != ED25519_SIG_SIZE or not verifier.public.verify(signature, body_bytes):
            raise NoteError(f"signature line {number} by known key {name} does not verify")
        verified += 1
    if verified == 0:
        raise NoteError("note carries no signature from a trusted key")
    return body


def unverified_body(note_text: str) -> str:
    """The text of a note, no signature checked: only for notes read from the log's own store."""
    split = note_text.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    return note_text[: split + 1]


def parse_signature_line(line: str, number: int) -> tuple[str, bytes]:
    """The key name and signature blob of signature line `number`."""
    if not line.startswith(SIG_PREFIX):
        raise NoteError(f"signature line {number} does not start with an em dash and a space")
    fields = line[len(SIG_PREFIX) :].split(" ")
    if len(fields) != 2:
        raise NoteError(f"signature line {number} is not '— <key name> <base64 signature>'")
    name, blob_b64 = fields
    check_key_name(name)
    blob = _b64decode(blob_b64, f"signature line {number}")
    if len(blob) <= KEY_ID_SIZE:
        raise NoteError(f"signature line {number} is too short to hold a key id and a signature")
    return name, blob


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """The tlog-checkpoint note text for a tree of `size` leaves with Merkle root `root`."""
    if not origin or "\n" in origin:
        raise NoteError("checkpoint origin must be a non-empty single line")
    _check_text(origin, "checkpoint origin")
    if size < 0:
        raise NoteError("checkpoint tree size must not be negative")
    if len(root) != HASH_SIZE:
        raise NoteError(f"checkpoint root must be a {HASH_SIZE}-byte hash")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def parse_checkpoint(body: str) -> tuple[str, int, bytes]:
    """Parse a verified checkpoint text into (origin, tree size, root); extensions are ignored."""
    _check_body(body)
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs an origin, a tree size and a root hash line")
    origin, size_text, root_b64 = lines[:3]
    if not origin:
        raise NoteError("checkpoint origin line is empty")
    if not size_text.isascii() or not size_text.isdigit() or len(size_text) > 20:
        raise NoteError(f"checkpoint tree size {size_text!r} is not a decimal number")
    if len(size_text) > 1 and size_text[0] == "0":
        raise NoteError(f"checkpoint tree size {size_text!r} has a leading zero")
    root = _b64decode(root_b64, "checkpoint root line")
    if len(root) != HASH_SIZE:
        raise NoteError(f"checkpoint root is {len(root)} bytes, not {HASH_SIZE}")
    if any(not extension for extension in lines[3:]):
        raise NoteError("checkpoint has an empty extension line")
    return origin, int(size_text), root
