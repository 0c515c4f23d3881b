"""What a node logs of one exchange: the broker's signed query and the city's signed result or
refusal, whole, or as salted commitments when the exchange is about single residents.

Other parties read the node's log (LogService). An attribute check's query names a resident and
its result says something about them; a record release's result carries residents' (pseudonymised)
records. Those statements enter the log only as commitments (domain.commitment: the statement's
type, SHA-256(salt || statement), and the exchange's request id and broker), and the city keeps
each statement with its salt in exchange_openings, written in the log's own transaction, so every
commitment logged has its opening stored. The result's salt goes back to the broker with the
result, so its receipt can name the commitment an auditor finds in this log.

Erasure (node.erasure) deletes the openings of an attribute check about the erased resident.
A record release's openings are kept: they name no resident (pseudonyms keyed per agreement)
and are the city's evidence of what it released to a recipient who holds the same records, which
the city must be able to account for (GDPR Art. 17(3)(b) and (e)); they leave with the
agreement's retention duty, not with one resident.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from audit.log import SideWrite
from audit.schema import exchange_openings
from domain import commitment, statements
from domain.kinds import Statement
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node.schema import consent_records, log_erasures


@dataclass(frozen=True)
class Logged:
    """The two entries to append for an exchange (query, then result or refusal), what stores
    their openings in the log's transaction (None: logged whole), and the result's salt
    (empty when it is logged whole)."""

    entries: list[bytes]
    side_write: SideWrite | None
    outcome_salt: bytes = b""


class ExchangeEvidence:
    """Builds a city's log entries of its exchanges; see the module docstring."""

    def __init__(self, city: str, signer: Signer) -> None:
        self._city, self._signer = city, signer

    def entries(
        self,
        request: statements.BrokerRequest,
        signed_query: dsse.Envelope,
        outcome: dsse.Envelope,
        thing: Statement,
    ) -> Logged:
        """The entries of `request`'s exchange, whose `outcome` is a statement of type `thing`
        (result or refusal)."""
        query = request.query
        if query is None or not commitment.committed_exchange(query):
            return Logged([signed_query.to_json(), outcome.to_json()], None)
        context = commitment.exchange_context(request.request_id, request.broker)
        at = timefmt.now()
        kept = [
            (Statement.QUERY, signed_query.to_json(), secrets.token_bytes(commitment.SALT_BYTES)),
            (thing, outcome.to_json(), secrets.token_bytes(commitment.SALT_BYTES)),
        ]
        entries = [
            commitment.sign(self._city, at, t, salt, body, self._signer, context)
            for t, body, salt in kept
        ]
        rows = [
            {
                "statement_type": t.value,
                "request_id": request.request_id,
                "resident_id": query.subject or None,
                "statement": body,
                "salt": salt,
            }
            for t, body, salt in kept
        ]

        erasable = thing is Statement.RESULT and bool(query.subject)

        def keep_openings(conn: sa.Connection, first_index: int) -> None:
            indexes = [first_index + i for i in range(len(rows))]
            if erasable and not _has_consent_records(conn, query.subject):
                # Its subject was erased since the check was answered (node.erasure holds the
                # log's lock too): keep nothing that names them, only that the entries are erased.
                at = timefmt.to_db(timefmt.now())
                conn.execute(
                    log_erasures.insert(),
                    [{"log_index": i, "members": None, "erased_at": at} for i in indexes],
                )
                return
            conn.execute(
                exchange_openings.insert(),
                [{"log_index": i, **row} for i, row in zip(indexes, rows, strict=True)],
            )

        return Logged(entries, keep_openings, kept[1][2])


def _has_consent_records(conn: sa.Connection, resident_id: str) -> bool:
    c = consent_records.c
    found = conn.execute(sa.select(c.record_id).where(c.resident_id == resident_id).limit(1))
    return found.first() is not None
