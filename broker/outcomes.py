"""What a federated exchange produced, city by city: outcomes, plans, offers and the merged exchange.

Plain values with no I/O, so the gRPC edge and the partner client can convert them without loading
the broker's log and database code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker import merge
from domain.agreement import Agreement
from domain.plan import QueryPlan
from domain.query import Query
from keys import dsse

ANSWERED, REFUSED, FAILED, TIMED_OUT, UNVERIFIED = (
    "answered",
    "refused",
    "failed",
    "timed_out",
    "unverified",
)


@dataclass
class CityOutcome:
    """What one city did in an exchange; an answered city carries its verified, signed result."""

    city: str
    status: str
    code: str = "OK"
    reason: str = ""
    message: str = ""
    signed_result: dsse.Envelope | None = None
    log_index: int = 0
    verified_result: dict[str, Any] | None = None
    # The salt of the city's commitment to its result in its log; empty when logged whole.
    result_salt: bytes = b""


@dataclass
class Exchange:
    """One finished exchange: the merged answer, every city's outcome, the signed query and receipt."""

    request_id: str
    cells: list[merge.MergedCell]
    outcomes: list[CityOutcome]
    signed_query: dsse.Envelope
    receipt: dsse.Envelope
    negotiation: list[str] = field(default_factory=list)
    # The salt of the broker's commitment to `signed_query` in its log (a query naming a
    # resident); empty when the query was logged whole.
    query_salt: bytes = b""


@dataclass
class CityPlan:
    """One city's dry-run plan, or (plan None) why it gave none."""

    city: str
    outcome: CityOutcome
    plan: QueryPlan | None


@dataclass(frozen=True)
class FederationPlan:
    """A dry run: the query negotiation would send, what it changed and why, and each city's plan."""

    negotiated: Query
    notes: list[str]
    cities: list[CityPlan]


@dataclass
class CityOffer:
    """One city's verified agreements with the caller, and its outcome."""

    city: str
    name: str
    jurisdiction: str
    outcome: CityOutcome
    agreements: list[tuple[Agreement, dsse.Envelope]] = field(default_factory=list)
