"""The city's evidence of consent events: each event's receipt, or each imported batch's
statement, signed with the city's key and committed to the node's log (kind `consent`). It is the
evidence that consent existed when a later result used it. The one place that signs and logs it,
for the API, the expiry of consents and the bulk import.

Other parties read the log, so a statement about residents enters it only as a salted commitment
(domain.commitment); the statement and its salt stay in the city's store (node.log_openings),
written in the log's own transaction, so every commitment logged has its opening stored."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from audit.log import MerkleLog, SideWrite
from domain import commitment, consent_batch
from domain.kinds import LogKind, Statement
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node.schema import consent_records, log_erasures, log_openings

RECEIPT = Statement.CONSENT_RECEIPT
LOG_KIND = LogKind.CONSENT


def sign_receipt_payload(body: bytes, signer: Signer) -> bytes:
    """The DSSE consent receipt (`Envelope.to_json`) over a canonical receipt payload."""
    ptype = dsse.media_type(RECEIPT)
    signer = signer.in_use()  # signature and key id from one key, even while it rotates
    sig = dsse.Signature(signer.keyid, signer.sign(dsse.pae(ptype, body)))
    return dsse.Envelope(ptype, body, (sig,)).to_json()


class ConsentEvidence:
    """Signs a city's consent receipts and batch statements and appends them to its log.

    The log is required: evidence that could be signed but not logged would keep consent events
    out of the audit log, so there is no way to build one without it."""

    def __init__(self, city: str, signer: Signer, log: MerkleLog) -> None:
        self._city, self._signer, self._log = city, signer, log

    def sign_receipt(self, payload: dict[str, Any]) -> bytes:
        """The signed consent receipt (DSSE over canonical JSON) of one receipt payload."""
        return dsse.sign(RECEIPT, payload, self._signer).to_json()

    def sign_receipt_payload(self, body: bytes) -> bytes:
        """The signed consent receipt over an already canonical receipt payload."""
        return sign_receipt_payload(body, self._signer)

    def commit(self, thing: str, statement: bytes, salt: bytes) -> bytes:
        """The signed commitment entry to `statement` (of type `thing`) under `salt`."""
        return commitment.sign(self._city, timefmt.now(), thing, salt, statement, self._signer)

    def log_receipt(self, receipt: bytes) -> bytes:
        """Commit a signed receipt to the log (once the event is stored), as a salted commitment
        whose opening (receipt and salt) is stored in the log's transaction; returns the receipt."""
        claims = json.loads(dsse.Envelope.from_json(receipt).payload)
        salt = secrets.token_bytes(commitment.SALT_BYTES)
        record_id = str(claims["record_id"])
        row: dict[str, Any] = {
            "statement_type": RECEIPT.value,
            "resident_id": str(claims["resident_id"]),
            "record_id": record_id,
            "statement": receipt,
            "salt": salt,
        }

        def keep_opening(conn: sa.Connection, index: int) -> None:
            if _record_exists(conn, record_id):
                conn.execute(log_openings.insert().values(log_index=index, **row))
            else:  # its resident was erased since the event was stored (node.erasure)
                conn.execute(
                    log_erasures.insert().values(
                        log_index=index, members=None, erased_at=timefmt.to_db(timefmt.now())
                    )
                )

        entry = self.commit(RECEIPT, receipt, salt)
        self._log.append_many([entry], LOG_KIND, side_write=keep_opening)
        return receipt

    def sign_batch(self, at: datetime, digests: Sequence[str]) -> bytes:
        """The signed statement covering these (salted, `domain.commitment.member_digest`)
        receipt payload digests of one imported batch."""
        return consent_batch.sign(self._city, at, digests, self._signer)

    def log_batches(self, statements: Sequence[tuple[bytes, bytes]], side_write: SideWrite) -> None:
        """Commit a batch's (statement, salt) pairs to the log as salted commitments;
        `side_write` (which stores their log indexes) runs in the log's transaction."""
        entries = [self.commit(consent_batch.STATEMENT, env, salt) for env, salt in statements]
        self._log.append_many(entries, LOG_KIND, side_write=side_write)


def _record_exists(conn: sa.Connection, record_id: str) -> bool:
    c = consent_records.c
    return conn.execute(sa.select(c.record_id).where(c.record_id == record_id)).first() is not None
