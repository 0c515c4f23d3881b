"""How the broker logs the signed query of one exchange: whole, or, when it names a resident
(an attribute check's `subject`), as a salted commitment (domain.commitment).

Cities and auditors read the broker's log. A query naming a resident would show them the
resident's id, and any unsalted digest of it could be confirmed by brute force over resident ids.
So the log holds the broker's signed commitment, and the broker keeps the signed query and its
salt in its own database (exchange_openings, written in the log's transaction). The salt goes to
the partner with the answer, so it can check that the receipt's `query_commitment` is its query.
The broker keeps no erasure of its own: the openings leave with its database's retention.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from audit.log import SideWrite
from audit.schema import exchange_openings
from domain import commitment
from domain.kinds import Statement
from domain.query import Query
from keys import dsse, timefmt
from keys.ed25519 import Signer


@dataclass(frozen=True)
class LoggedQuery:
    """The log entry for the signed query, and, when it is a commitment, its salt, the digest
    the receipt names, and what stores the opening in the log's transaction (the query is the
    first entry of the batch)."""

    entry: bytes
    salt: bytes = b""
    commitment: str | None = None
    side_write: SideWrite | None = None


def logged_query(
    broker: str, request_id: str, query: Query, signed: dsse.Envelope, signer: Signer
) -> LoggedQuery:
    """How the broker logs `signed` (its signed `query` of exchange `request_id`)."""
    body = signed.to_json()
    if not commitment.committed_query(query):
        return LoggedQuery(body)
    salt = secrets.token_bytes(commitment.SALT_BYTES)
    entry = commitment.sign_for_broker(broker, timefmt.now(), request_id, salt, body, signer)
    row = {
        "statement_type": Statement.QUERY.value,
        "request_id": request_id,
        "resident_id": query.subject,
        "statement": body,
        "salt": salt,
    }

    def keep_opening(conn: sa.Connection, first_index: int) -> None:
        conn.execute(exchange_openings.insert().values(log_index=first_index, **row))

    return LoggedQuery(entry, salt, commitment.digest(salt, body), keep_opening)
