"""The city's evidence of consent events: each event's receipt, or each imported batch's
statement, signed with the city's key and committed to the node's log (kind `consent`). It is the
evidence that consent existed when a later result used it. The one place that signs and logs it,
for the API, the expiry of consents and the bulk import."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from audit.log import MerkleLog, SideWrite
from domain import consent_batch
from domain.kinds import LogKind, Statement
from keys import dsse
from keys.ed25519 import Signer

RECEIPT = Statement.CONSENT_RECEIPT
LOG_KIND = LogKind.CONSENT


def sign_receipt_payload(body: bytes, signer: Signer) -> bytes:
    """The DSSE consent receipt (`Envelope.to_json`) over a canonical receipt payload."""
    ptype = dsse.media_type(RECEIPT)
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

    def log_receipt(self, receipt: bytes) -> bytes:
        """Commit a signed receipt to the log (once the event is stored); returns the receipt."""
        self._log.append(receipt, kind=LOG_KIND)
        return receipt

    def sign_batch(self, at: datetime, digests: Sequence[str]) -> bytes:
        """The signed statement covering these receipt payloads of one imported batch."""
        return consent_batch.sign(self._city, at, digests, self._signer)

    def log_batches(self, envelopes: Sequence[bytes], side_write: SideWrite) -> None:
        """Commit a batch's statements to the log; `side_write` runs in the log's transaction."""
        self._log.append_many(envelopes, LOG_KIND, side_write=side_write)
