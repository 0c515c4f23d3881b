"""C2SP tlog-cosignature/v1 (Ed25519): a witness's timestamped signature over a checkpoint.

A city cosigns a broker's checkpoint only after checking that it extends the last one it cosigned,
so a broker cannot show different histories to different parties without one of them noticing.

Pure: text and keys in, text or NoteError out; no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from audit.note import (
    ED25519_SIG_SIZE,
    KEY_ID_SIZE,
    SIG_PREFIX,
    NoteError,
    check_key_name,
    parse_signature_line,
)
from keys.ed25519 import PublicKey, Signer

COSIGNATURE_TYPE = 0x04


def cosigner_key_id(name: str, public: PublicKey) -> bytes:
    """SHA-256(name || "\\n" || 0x04 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([COSIGNATURE_TYPE]) + public.raw).digest()[
        :KEY_ID_SIZE
    ]


def _message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign(body: str, name: str, signer: Signer, timestamp: int) -> str:
    """One signature line ("— name base64(keyid || u64 time || sig)") cosigning checkpoint `body`."""
    check_key_name(name)
    if not 0 <= timestamp < 1 << 63:
        raise NoteError("cosignature timestamp out of range")
    signer = signer.in_use()  # signature and key id from one key, even while it rotates
    sig = signer.sign(_message(body, timestamp))
    blob = cosigner_key_id(name, signer.public) + struct.pack(">Q", timestamp) + sig
    return f"{SIG_PREFIX}{name} {base64.b64encode(blob).decode()}"


def verify_cosignature(line: str, body: str, name: str, public: PublicKey) -> int:
    """Check a cosignature line by witness `name` over checkpoint `body`; return its timestamp."""
    got_name, blob = parse_signature_line(line, 1)
    if got_name != name or blob[:KEY_ID_SIZE] != cosigner_key_id(name, public):
        raise NoteError(f"cosignature is not by witness {name}")
    if len(blob) != KEY_ID_SIZE + 8 + ED25519_SIG_SIZE:
        raise NoteError("cosignature has the wrong length")
    (timestamp,) = struct.unpack(">Q", blob[KEY_ID_SIZE : KEY_ID_SIZE + 8])
    if timestamp >= 1 << 63 or not public.verify(
        blob[KEY_ID_SIZE + 8 :], _message(body, timestamp)
    ):
        raise NoteError(f"cosignature by {name} does not verify")
    return int(timestamp)


def witness_name(city: str) -> str:
    """The witness name a city cosigns under."""
    return f"citybroker/witness/{city}"
