"""The broker's receipt: its signed account of one exchange (the query it sent, what each city did,
and a digest of the merged answer). Pure; no I/O.

The receipt is built and signed here; it is verified with the other statements, by
`domain.statements.verify_receipt`, so that every party reads it alike.

Other parties read the broker's log, so a receipt names nothing a reader could confirm a
resident's id against. For a query naming a resident (an attribute check) it names the query by
`query_commitment`, the broker's salted commitment to the signed query (the same digest as the
broker's log entry for it; domain.commitment), instead of by the unsalted `query_digest`. A city
that logged its result as a commitment is named by that commitment (`result_commitment`, its
`result_digest` null), which is also what an auditor finds at `node_log_index` in its log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domain import statements
from keys import dsse, timefmt
from keys.ed25519 import Signer

# What the receipt says about each city that a partner compares with the response, in this order.
OUTCOME_FIELDS = ("city", "status", "code", "reason", "result_digest", "node_log_index")


@dataclass(frozen=True)
class CityEntry:
    """One city's line in the receipt. A city that returned no signed result has neither a
    `result_digest` nor a `node_log_index`; its status `timed_out` (or `failed`) is the broker's
    signed word that it stopped waiting for that city in this exchange, so a result the city
    logged anyway is accounted for as released but not delivered (audit.coverage)."""

    city: str
    status: str
    code: str
    reason: str
    result_digest: str | None
    node_log_index: int | None
    jurisdiction: str
    # The city's salted commitment to its result, when it logged that (result_digest is None).
    result_commitment: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """The entry as the JSON object the receipt lists; a missing digest or log index is null."""
        return {
            "city": self.city,
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
            "result_digest": self.result_digest,
            "node_log_index": self.node_log_index,
            "jurisdiction": self.jurisdiction,
            **({"result_commitment": self.result_commitment} if self.result_commitment else {}),
        }


@dataclass(frozen=True)
class Receipt:
    """What the broker signs after an exchange; `query_digest` names the signed query sent, or
    for a query naming a resident, `query_commitment` does (and `query_digest` is not signed)."""

    request_id: str
    query_digest: str
    broker: str
    partner: str
    partner_jurisdiction: str
    purpose: str
    dataset: str
    cities: tuple[CityEntry, ...]
    answer_digest: str
    negotiation: tuple[str, ...] = ()
    query_commitment: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """The receipt as a JSON object, without the `issued_at` that `sign` adds when it signs."""
        named = (
            {"query_commitment": self.query_commitment}
            if self.query_commitment
            else {"query_digest": self.query_digest}
        )
        return {
            "request_id": self.request_id,
            **named,
            "broker": self.broker,
            "partner": self.partner,
            "purpose": self.purpose,
            "dataset": self.dataset,
            "cities": [c.to_payload() for c in self.cities],
            "partner_jurisdiction": self.partner_jurisdiction,
            "answer_digest": self.answer_digest,
            "negotiation": list(self.negotiation),
        }


def answer_digest(merged_cells: Sequence[dict[str, Any]]) -> str:
    """The digest a receipt gives of the merged answer (its cells as payload objects)."""
    return statements.digest(dsse.canonical(list(merged_cells)))


def sign(receipt: Receipt, signer: Signer) -> dsse.Envelope:
    """The receipt as a DSSE envelope signed by the broker, stamped with the time of signing."""
    return dsse.sign(
        statements.RECEIPT,
        {**receipt.to_payload(), "issued_at": timefmt.fmt(timefmt.now())},
        signer,
    )


def listed_outcomes(verified_receipt: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The receipt's city outcomes (OUTCOME_FIELDS of each), in the order the broker signed them."""
    return [
        tuple(c.get(k) for k in OUTCOME_FIELDS)
        for c in verified_receipt.get("cities", [])
        if isinstance(c, dict)
    ]
