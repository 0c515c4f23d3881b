"""The signed statement of a bulk consent import (`Statement.CONSENT_BATCH`): one per batch, not
one per event. It lists the SHA-256 digest of each imported event's canonical receipt payload (of
type `RECEIPT_TYPE`, the payload the API would sign for it), in the order applied, with the city
and the time. Since migration 0014 each digest is salted (`domain.commitment.member_digest`, a
salt of its own per event, kept with the event) and the statement says so (`"salted": true`):
an unsalted digest of a low-entropy payload could be confirmed by guessing it. The statement
itself enters the log only as a commitment (`domain.commitment`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from domain.kinds import Statement
from keys import dsse, timefmt
from keys.ed25519 import Signer

STATEMENT = Statement.CONSENT_BATCH
RECEIPT_TYPE = dsse.media_type(Statement.CONSENT_RECEIPT)
# The most receipt payloads one statement covers: 8192 digests make about 800 KB of envelope,
# within the log's 1 MB entry limit.
MAX_EVENTS = 8192


def payload(city: str, at: datetime, digests: Iterable[str]) -> dict[str, Any]:
    """What a batch's statement signs: the city, when, and the salted digest
    (`domain.commitment.member_digest` of `receipt_digest`) of each imported event's canonical
    receipt payload, in the order they were applied."""
    return {
        "city": city,
        "at": timefmt.fmt(at),
        "receipt_type": RECEIPT_TYPE,
        "receipts": list(digests),
        "salted": True,
    }


def receipt_digest(receipt_payload: bytes) -> str:
    """How a batch's statement names a receipt payload: its SHA-256."""
    return "sha256:" + hashlib.sha256(receipt_payload).hexdigest()


def sign(city: str, at: datetime, digests: Sequence[str], signer: Signer) -> bytes:
    """The signed statement (DSSE, `Envelope.to_json`) covering these receipt payloads."""
    return dsse.sign(STATEMENT, payload(city, at, digests), signer).to_json()
