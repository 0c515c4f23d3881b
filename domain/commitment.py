"""Salted commitments: how a resident-level statement enters a log that other parties read.

The log entry is a small statement (`Statement.COMMITMENT`) signed by the city, naming the kind
of statement it stands for and `sha256(salt || statement)`, where `statement` is the exact bytes
of the signed statement and `salt` 32 random bytes the city keeps beside it. Without the salt
the digest reveals nothing (not even a guessable statement can be confirmed); with the statement
and its salt (an `Opening`) anyone can check that the log holds it. Erasing the statement and
its salt (GDPR Art. 17) leaves the entry, and so the log, verifiable: the entry is then erased.

A bulk import's statement (`domain.consent_batch`) lists one digest per event; those are salted
too (`member_digest`), each with a salt of its own, so a resident's opening of their event shows
nothing about the batch's other residents.

Exchanges about single residents (`committed_exchange`: attribute checks, which name a resident,
and record releases, which carry their records) enter logs the same way: the node commits the
signed query and its signed result or refusal, the broker the signed query of an attribute check.
Such a commitment also names its exchange (`request_id`, and at a node the `broker` it answered),
which is no personal data, so that an auditor can match it with the broker's receipt without the
opening. A broker's commitment names its signer as `broker` where a city's names `city`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.kinds import Statement
from domain.query import Query, QueryKind
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.errors import SignatureError

STATEMENT = Statement.COMMITMENT
SALT_BYTES = 32
PREFIX = "sha256:"
# The statement types that enter a log only as commitments.
COMMITTED = frozenset(
    {
        Statement.CONSENT_RECEIPT,
        Statement.CONSENT_BATCH,
        Statement.QUERY,
        Statement.RESULT,
        Statement.REFUSAL,
    }
)
# Of those, what a broker's log may hold: the signed query of an attribute check.
BROKER_COMMITTED = frozenset({Statement.QUERY})
# The query kinds whose exchanges a node logs as commitments (query and result or refusal).
COMMITTED_KINDS = frozenset({QueryKind.ATTRIBUTE_CHECK, QueryKind.RECORD_RELEASE})


def committed_exchange(query: Query) -> bool:
    """Whether a node logs this query's exchange as commitments: it is about single residents
    (an attribute check names one; a record release carries their pseudonymised records)."""
    return query.kind in COMMITTED_KINDS


def committed_query(query: Query) -> bool:
    """Whether a broker logs this signed query as a commitment: it names a resident (`subject`),
    whose id a reader could confirm by brute force against any unsalted digest of the query."""
    return bool(query.subject)


def digest(salt: bytes, statement: bytes) -> str:
    """The commitment to `statement` under `salt`: sha256:<hex of SHA-256(salt || statement)>."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a commitment salt is {SALT_BYTES} bytes")
    return PREFIX + hashlib.sha256(salt + statement).hexdigest()


def member_digest(salt: bytes, receipt_payload_digest: str) -> str:
    """How a salted consent-batch statement names one event: SHA-256(salt || SHA-256(payload)),
    the inner digest as its 32 raw bytes (`receipt_payload_digest` is sha256:<hex>)."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a commitment salt is {SALT_BYTES} bytes")
    inner = bytes.fromhex(receipt_payload_digest.removeprefix(PREFIX))
    return PREFIX + hashlib.sha256(salt + inner).hexdigest()


def payload(
    city: str, at: datetime, thing: str, commitment: str, exchange: dict[str, str] | None = None
) -> dict[str, Any]:
    """What a commitment entry signs: the city, when, the committed statement's type, its digest,
    and for an exchange's statement its `exchange_context`."""
    return {
        "city": city,
        "at": timefmt.fmt(at),
        "statement": thing,
        "commitment": commitment,
        **(exchange or {}),
    }


def sign(
    city: str,
    at: datetime,
    thing: str,
    salt: bytes,
    statement: bytes,
    signer: Signer,
    exchange: dict[str, str] | None = None,
) -> bytes:
    """The signed commitment entry (DSSE, `Envelope.to_json`) to `statement` under `salt`."""
    claims = payload(city, at, thing, digest(salt, statement), exchange)
    return dsse.sign(STATEMENT, claims, signer).to_json()


def exchange_context(request_id: str, broker: str) -> dict[str, str]:
    """What a node's commitment to an exchange's statement says of the exchange (no personal
    data): the broker's request id and the broker it answered."""
    return {"request_id": request_id, "broker": broker}


def sign_for_broker(
    broker: str, at: datetime, request_id: str, salt: bytes, statement: bytes, signer: Signer
) -> bytes:
    """A broker's signed commitment entry to the signed query of exchange `request_id`."""
    claims = {
        "broker": broker,
        "at": timefmt.fmt(at),
        "statement": Statement.QUERY.value,
        "commitment": digest(salt, statement),
        "request_id": request_id,
    }
    return dsse.sign(STATEMENT, claims, signer).to_json()


def signer_field(claims: dict[str, Any]) -> str:
    """The field of a commitment's claims naming who signed it: `city`, or a broker's `broker`."""
    return "city" if "city" in claims else "broker"


def statement_type(statement: bytes) -> str | None:
    """The `<thing>` of a DSSE statement's payload type; None if it is not one of ours."""
    try:
        ptype = dsse.Envelope.from_json(statement).payload_type
    except SignatureError:
        return None
    if not ptype.startswith(dsse.MEDIA_PREFIX):
        return None
    return ptype.removeprefix(dsse.MEDIA_PREFIX).removesuffix("+json")


def is_commitment(entry: bytes) -> bool:
    """Whether a log entry is a commitment statement (rather than a statement logged whole)."""
    return statement_type(entry) == STATEMENT


@dataclass(frozen=True)
class Opening:
    """A committed statement with what proves it is in the log: its salt and the entry's index.
    For an imported event, `member_payload` and `member_salt` open one digest of the batch's
    statement (`member_digest`)."""

    index: int
    statement: bytes
    salt: bytes
    member_payload: bytes = b""
    member_salt: bytes = b""


def opening_problem(claims: dict[str, Any], opening: Opening) -> str | None:
    """Why `opening` does not open the commitment entry whose signed payload is `claims`; None
    when it does (the statement is of the type named, its salted digest is the one committed,
    and any member is listed in the batch's statement)."""
    try:
        if digest(opening.salt, opening.statement) != claims.get("commitment"):
            return "the salted digest of the statement is not the one committed"
    except ValueError as e:
        return str(e)
    if statement_type(opening.statement) != claims.get("statement"):
        return "the statement is not of the type committed"
    if "request_id" in claims:
        return _exchange_problem(claims, opening.statement)
    if opening.member_payload or opening.member_salt:
        return _member_problem(opening)
    return None


def _exchange_problem(claims: dict[str, Any], statement: bytes) -> str | None:
    """An exchange's statement must be of the exchange (and broker) its commitment names."""
    try:
        opened = json.loads(dsse.Envelope.from_json(statement).payload)
    except (ValueError, SignatureError):
        return "the statement cannot be read"
    named = {k: claims[k] for k in ("request_id", "broker") if k in claims}
    if not isinstance(opened, dict) or any(opened.get(k) != v for k, v in named.items()):
        return "the statement is of another exchange than its commitment names"
    return None


def _member_problem(opening: Opening) -> str | None:
    try:
        statement = json.loads(dsse.Envelope.from_json(opening.statement).payload)
        listed = set(statement["receipts"])
        inner = PREFIX + hashlib.sha256(opening.member_payload).hexdigest()
        member = member_digest(opening.member_salt, inner)
    except (ValueError, KeyError, TypeError, SignatureError) as e:
        return f"the batch member cannot be checked: {type(e).__name__}"
    if member not in listed:
        return "the batch's statement does not list this event"
    return None
