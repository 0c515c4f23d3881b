"""The signed statements of a federated exchange: the broker's query, each city's result, the
broker's receipt. Builders and verifiers live together so that every party reads them alike.

Verification reads only the signer's party id from the payload before the signature is checked (to
know whose keys to check against); nothing else is used until the signature verifies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.kinds import Statement
from domain.query import Query
from keys import bounded_json, dsse, timefmt
from keys.ed25519 import Signer
from keys.errors import SignatureError
from keys.trust import Role, TrustBundle

QUERY, PLAN, DESCRIBE = Statement.QUERY, Statement.PLAN, Statement.DESCRIBE
RESULT, REFUSAL, RECEIPT = Statement.RESULT, Statement.REFUSAL, Statement.RECEIPT
WITH_QUERY = frozenset({QUERY, PLAN})


def digest(payload: bytes) -> str:
    """The sha256 digest of a payload, as statements name each other."""
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def verify_from(
    envelope: dsse.Envelope,
    thing: str,
    bundle: TrustBundle,
    signer_field: str,
    role: Role,
    at_field: str,
) -> tuple[dict[str, Any], str]:
    """Verify an envelope signed by the party its payload names in `signer_field`, with a key valid
    at the time in `at_field`. Returns the payload and that party's id."""
    if envelope.payload_type != dsse.media_type(thing):
        raise SignatureError(
            f"expected a {thing}, got {envelope.payload_type!r}", reason="PAYLOAD_TYPE_MISMATCH"
        )
    try:
        unverified = bounded_json.loads(envelope.payload, f"the {thing} payload")
        party, at = str(unverified[signer_field]), timefmt.parse(unverified[at_field])
    except (ValueError, KeyError, TypeError):
        raise SignatureError(f"{thing} payload is malformed", reason="PAYLOAD_MALFORMED") from None
    if bundle.party(party, role) is None:
        raise SignatureError(
            f"{thing} signer {party!r} is not a {role.value} in the trust bundle",
            reason="SIGNER_UNKNOWN",
        )
    dsse.verify_signatures(envelope, thing, bundle.key_lookup(party, at))
    # Parsed from the very bytes the signature covers: once verified, it is the verified payload
    # (an object, or reading the signer field above would have failed).
    payload: dict[str, Any] = unverified
    return payload, party


@dataclass(frozen=True)
class BrokerRequest:
    """A broker-signed query or describe request, as a node verified it."""

    request_id: str
    broker: str
    partner: str
    token: str
    issued_at: datetime
    query: Query | None
    digest: str
    # The partner's own query and the negotiation notes, when negotiation changed it.
    asked: Query | None = None
    negotiation: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnsignedRequest:
    """A broker's request to the cities before it signs it. When negotiation changed the
    partner's query, `asked` is the query as the partner asked it and `negotiation` says what
    changed and why."""

    request_id: str
    broker: str
    partner: str
    token: str
    query: Query | None
    asked: Query | None = None
    negotiation: tuple[str, ...] = ()


def sign_request(thing: str, request: UnsignedRequest, signer: Signer) -> dsse.Envelope:
    """A broker's request to the cities, signed as a `thing` (query, plan or describe)."""
    payload: dict[str, Any] = {
        "request_id": request.request_id,
        "broker": request.broker,
        "partner": request.partner,
        "token": request.token,
        "issued_at": timefmt.fmt(timefmt.now()),
    }
    if request.query is not None:
        payload["query"] = request.query.to_payload()
    if request.asked is not None and request.asked != request.query:
        payload["asked"] = request.asked.to_payload()
        payload["negotiation"] = list(request.negotiation)
    return dsse.sign(thing, payload, signer)


def verify_request(envelope: dsse.Envelope, thing: str, bundle: TrustBundle) -> BrokerRequest:
    """A broker-signed `thing`, verified against the trust bundle, or SignatureError."""
    payload, broker = verify_from(envelope, thing, bundle, "broker", Role.BROKER, "issued_at")
    try:
        query = Query.from_payload(payload["query"]) if thing in WITH_QUERY else None
        return BrokerRequest(
            str(payload["request_id"]),
            broker,
            str(payload["partner"]),
            str(payload["token"]),
            timefmt.parse(payload["issued_at"]),
            query,
            digest(envelope.payload),
            Query.from_payload(payload["asked"]) if "asked" in payload else None,
            tuple(str(n) for n in payload.get("negotiation", [])),
        )
    except (KeyError, TypeError, ValueError):
        raise SignatureError(f"{thing} payload is malformed", reason="PAYLOAD_MALFORMED") from None


@dataclass(frozen=True)
class UnsignedResult:
    """A city's minimised answer before it signs it: under which agreement and k, its cells (or
    a record release's records) and the cells withheld, where the data comes from and goes to."""

    city: str
    # (agreement id, version)
    agreement: tuple[str, int]
    k: int
    cells: list[dict[str, Any]] = field(default_factory=list)
    withheld: list[dict[str, str]] = field(default_factory=list)
    # (provider, recipient)
    jurisdictions: tuple[str, str] = ("", "")
    # Differential privacy applied (mechanism, epsilon spent, budget left), if any.
    privacy: dict[str, Any] | None = None
    # A record release's records: allowed fields, residents pseudonymised per agreement.
    records: list[dict[str, Any]] | None = None
    # The disclosure terms in force (Agreement.disclosure_terms: regime and parameters), so that
    # partners and auditors know what the numbers mean.
    disclosure: dict[str, Any] | None = None


def sign_result(request: BrokerRequest, result: UnsignedResult, signer: Signer) -> dsse.Envelope:
    """A city's signed, minimised answer to `request`; it states where the data comes from and
    goes to."""
    assert request.query is not None
    return dsse.sign(
        RESULT,
        {
            "request_id": request.request_id,
            "query_digest": request.digest,
            "city": result.city,
            "broker": request.broker,
            "partner": request.partner,
            "purpose": request.query.purpose,
            "dataset": request.query.dataset,
            "agreement": {"id": result.agreement[0], "version": result.agreement[1]},
            "min_cell_size": result.k,
            "cells": result.cells,
            "withheld": result.withheld,
            "jurisdictions": {
                "provider": result.jurisdictions[0],
                "recipient": result.jurisdictions[1],
            },
            "privacy": result.privacy,
            "kind": request.query.kind.value,
            "records": result.records if result.records is not None else [],
            "issued_at": timefmt.fmt(timefmt.now()),
            **({"disclosure": result.disclosure} if result.disclosure is not None else {}),
        },
        signer,
    )


def sign_refusal(
    request: BrokerRequest, city: str, code: str, reason: str, message: str, signer: Signer
) -> dsse.Envelope:
    """A city's signed record that it refused a query, and why: refusals are evidence too."""
    return dsse.sign(
        REFUSAL,
        {
            "request_id": request.request_id,
            "query_digest": request.digest,
            "city": city,
            "broker": request.broker,
            "partner": request.partner,
            "code": code,
            "reason": reason,
            "message": message,
            "issued_at": timefmt.fmt(timefmt.now()),
        },
        signer,
    )


def verify_result(envelope: dsse.Envelope, bundle: TrustBundle) -> dict[str, Any]:
    """A city-signed result's payload, verified against the trust bundle, or SignatureError."""
    payload, _ = verify_from(envelope, RESULT, bundle, "city", Role.CITY, "issued_at")
    return payload


def verify_receipt(envelope: dsse.Envelope, bundle: TrustBundle) -> dict[str, Any]:
    """A broker-signed receipt's payload, verified against the trust bundle, or SignatureError."""
    payload, _ = verify_from(envelope, RECEIPT, bundle, "broker", Role.BROKER, "issued_at")
    return payload
