"""A broker's signed record of a city's checkpoint: the broker witnessing a city's log.

A city's bundle shows only as much of its log as the city chose to export. A broker's receipts
vouch for it up to the last result the broker received, but consent events, agreement changes or
exchanges logged after that need another party's word. So the broker's witnessing round
(broker.city_logs) fetches each city's latest signed checkpoint, checks it here (the city's
signature and origin, and that it extends the last one the broker recorded for that city, by a
consistency proof) and logs it in the broker's own log as a `witnessed-checkpoint` statement,
signed by the broker, under kind `witness`:

    {"broker", "at", "city", "origin", "tree_size", "root" (base64),
     "checkpoint": the city's signed note, exactly as served,
     "extends": the size of the previous record it was proved to extend (0 for the first)}

The broker's log is signed, cosigned by the cities and exported in the broker's bundle, so the
verifier can require each city's log to reach the largest size the broker recorded for it, with
the recorded root at that size (audit.coverage). Because the record carries the city's own signed
note, which the verifier checks again, a broker cannot make a city look truncated or forked with
a checkpoint the city never signed.

Pure: values in, a signed envelope or a VerificationError out; no I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from audit.merkle import verify_consistency
from audit.note import NoteError, NoteVerifier, parse_checkpoint, verify_note
from domain.errors import VerificationError
from domain.kinds import LogKind, Statement
from keys import bounded_json, dsse, timefmt
from keys.ed25519 import PublicKey, Signer

THING, LOG_KIND = Statement.WITNESSED_CHECKPOINT, LogKind.WITNESS
_COSIGNATURE_TYPE = dsse.media_type(Statement.COSIGNATURE)


def node_origin(city: str) -> str:
    """The origin line of `city`'s log checkpoints."""
    return f"citybroker/node/{city}"


@dataclass(frozen=True)
class CityCheckpoint:
    """A city's checkpoint whose note verified against the city's keys: its size and root, and
    the note itself (the city's signature)."""

    city: str
    size: int
    root: bytes
    note: str


def verified_checkpoint(city: str, note: str, keys: Iterable[PublicKey]) -> CityCheckpoint:
    """The checkpoint `note` holds, if one of `keys` (the city's) signed it for the city's log;
    NoteError otherwise."""
    origin = node_origin(city)
    body = verify_note(note, [NoteVerifier.for_key(origin, k) for k in keys])
    cp_origin, size, root = parse_checkpoint(body)
    if cp_origin != origin:
        raise NoteError(
            f"checkpoint is for {cp_origin!r}, not {origin!r}", reason="CHECKPOINT_ORIGIN_MISMATCH"
        )
    return CityCheckpoint(city, size, root, note)


def check_extends(known: tuple[int, bytes], new: CityCheckpoint, proof: list[bytes]) -> None:
    """`new` must extend the last checkpoint recorded for its city, `known` (size, root; size 0
    for none): never smaller, never another root at the same size, else a consistency proof."""
    known_size, known_root = known
    origin = node_origin(new.city)
    if new.size < known_size:
        raise VerificationError(
            f"{origin} served size {new.size}, smaller than size {known_size} recorded before",
            reason="CHECKPOINT_STALE",
        )
    if known_size == 0:
        return  # the first checkpoint recorded: nothing to extend
    if new.size == known_size:
        if new.root != known_root:
            raise VerificationError(
                f"{origin} signed two trees of size {new.size}", reason="LOG_FORK"
            )
        return
    verify_consistency(known_size, new.size, proof, known_root, new.root)


def record(broker: str, checkpoint: CityCheckpoint, extends: int, signer: Signer) -> dsse.Envelope:
    """The broker's signed record that it checked `checkpoint`, extending its record of size
    `extends` (0: the first it recorded for that city)."""
    return dsse.sign(
        THING,
        {
            "broker": broker,
            "at": timefmt.fmt(timefmt.now()),
            "city": checkpoint.city,
            "origin": node_origin(checkpoint.city),
            "tree_size": checkpoint.size,
            "root": base64.b64encode(checkpoint.root).decode(),
            "checkpoint": checkpoint.note,
            "extends": extends,
        },
        signer,
    )


def recorded(claims: Mapping[str, Any], keys: Iterable[PublicKey]) -> CityCheckpoint:
    """The city checkpoint a (signature-verified) record names: its note verified again against
    `keys`, the city's, and the record's size and root the note's. NoteError if the note is not
    the city's, VerificationError (RECORD_MISMATCH) if the record misstates it, KeyError or
    TypeError if a field is missing or of the wrong type."""
    city, note = claims["city"], claims["checkpoint"]
    if not isinstance(city, str) or not isinstance(note, str):
        raise TypeError("city and checkpoint must be strings")
    checkpoint = verified_checkpoint(city, note, keys)
    stated = (claims["origin"], claims["tree_size"], claims["root"])
    if stated != (node_origin(city), checkpoint.size, base64.b64encode(checkpoint.root).decode()):
        raise VerificationError(
            f"the record's origin, size or root differ from {city}'s signed checkpoint",
            reason="RECORD_MISMATCH",
        )
    if not isinstance(claims["extends"], int) or not 0 <= claims["extends"] <= checkpoint.size:
        raise TypeError("extends must be a size no larger than the checkpoint's")
    return checkpoint


def is_cosignature(entry: bytes) -> bool:
    """Whether a log entry is a city's `cosignature` statement (by its DSSE payload type; the
    signature is not checked: a city's own statements in its own log are its word anyway)."""
    try:
        env = bounded_json.loads(entry, "a log entry")
        return isinstance(env, dict) and env.get("payloadType") == _COSIGNATURE_TYPE
    except ValueError:
        return False
