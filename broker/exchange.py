"""One federated exchange, from an authenticated partner's query to a signed, logged receipt.

The broker is not trusted with policy: it only plans which cities to ask, relays the partner's token
inside its signed request, verifies what comes back, merges, and signs what it did.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from audit.log import MerkleLog
from broker import merge
from citybroker.node.v1 import node_pb2
from domain import agreement as agreement_doc
from domain import statements
from domain.agreement import Agreement
from domain.errors import InvalidArgument, VerificationError
from domain.kinds import LogKind
from domain.plan import QueryPlan, negotiate
from domain.query import Query
from edge.city_gateway import CityChannels, fan_out
from edge.wire import envelope_from_pb, envelope_to_pb, plan_from_pb
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.tokens import VerifiedToken
from keys.trust import Role, TrustStore

ANSWERED, REFUSED, FAILED, TIMED_OUT, UNVERIFIED = (
    "answered",
    "refused",
    "failed",
    "timed_out",
    "unverified",
)
# Of the partner's remaining deadline, this share (at most REPLY_RESERVE_MAX_S) is kept for the
# broker's own work after the cities answer.
REPLY_RESERVE_SHARE = 0.25
REPLY_RESERVE_MAX_S = 1.0
_REFUSAL_CODES = {
    "INVALID_ARGUMENT",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
}


@dataclass
class CityOutcome:
    city: str
    status: str
    code: str = "OK"
    reason: str = ""
    message: str = ""
    signed_result: dsse.Envelope | None = None
    log_index: int = 0
    verified_result: dict[str, Any] | None = None


@dataclass
class Exchange:
    request_id: str
    cells: list[merge.MergedCell]
    outcomes: list[CityOutcome]
    signed_query: dsse.Envelope
    receipt: dsse.Envelope
    negotiation: list[str] = field(default_factory=list)


@dataclass
class CityPlan:
    city: str
    outcome: CityOutcome
    plan: QueryPlan | None


@dataclass
class CityOffer:
    city: str
    name: str
    jurisdiction: str
    outcome: CityOutcome
    agreements: list[tuple[Agreement, dsse.Envelope]] = field(default_factory=list)


_ID_LOCK = threading.Lock()
_last_id = [0, 0]  # unix milliseconds and counter of the latest request id


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562): unix milliseconds, a 12-bit counter, 62 random bits. Ids of one
    broker increase with time, so each node, which files its residents' transparency records
    under the request id, appends a new exchange after the earlier ones instead of scattering
    it through its index (fewer pages written per commit)."""
    with _ID_LOCK:
        ms, counter = time.time_ns() // 1_000_000, 0
        if ms <= _last_id[0]:  # same millisecond, or the clock stepped back
            ms, counter = _last_id[0], _last_id[1] + 1
            if counter > 0xFFF:
                ms, counter = ms + 1, 0
        _last_id[0], _last_id[1] = ms, counter
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62
    return str(uuid.UUID(int=value | secrets.randbits(62)))


def _failure(city: str, error: Any) -> CityOutcome:
    if error.code == "DEADLINE_EXCEEDED":
        status = TIMED_OUT
    elif error.code in _REFUSAL_CODES:
        status = REFUSED
    else:
        status = FAILED
    return CityOutcome(city, status, error.code, error.reason, error.message)


class Broker:
    def __init__(
        self,
        broker_id: str,
        signer: Signer,
        trust: TrustStore,
        channels: CityChannels,
        log: MerkleLog,
        city_timeout_s: float = 5.0,
        after_log: Callable[[], None] = lambda: None,
    ) -> None:
        self.id, self._signer, self._trust, self._channels, self._log = (
            broker_id,
            signer,
            trust,
            channels,
            log,
        )
        self._timeout = city_timeout_s
        self._after_log = after_log  # witnessing is told when the log grew

    def _city_timeout(self, deadline_s: float | None) -> float:
        """How long each city gets: the configured timeout, but never the partner's whole deadline.

        Part of the partner's remaining time is kept for verifying, merging, signing and logging,
        so that a slow city is reported as timed out instead of the whole call expiring.
        """
        if deadline_s is None:
            return self._timeout
        reserve = min(REPLY_RESERVE_MAX_S, deadline_s * REPLY_RESERVE_SHARE)
        return max(0.0, min(self._timeout, deadline_s - reserve))

    def _targets(self, cities: tuple[str, ...]) -> dict[str, str]:
        bundle = self._trust.current
        if not cities:
            return {c.id: c.endpoint for c in bundle.by_role(Role.CITY)}
        targets = {}
        for c in cities:
            party = bundle.party(c, Role.CITY)
            if party is None:
                raise InvalidArgument(f"unknown city {c!r}", reason="CITY_UNKNOWN", city=c)
            targets[c] = party.endpoint
        return targets

    def plan(
        self, caller: VerifiedToken, query: Query, deadline_s: float | None
    ) -> tuple[Query, list[str], list[CityPlan]]:
        """Ask every city for its dry-run plan; negotiate the finest shape they all allow."""
        targets = self._targets(query.cities)
        signed = statements.sign_request(
            statements.PLAN,
            str(uuid.uuid4()),
            self.id,
            caller.issuer,
            caller.raw,
            query,
            self._signer,
        )
        request = node_pb2.PlanQueryRequest(signed_request=envelope_to_pb(signed))
        timeout = self._city_timeout(deadline_s)
        replies = fan_out(
            targets, lambda stub: stub.PlanQuery.future(request, timeout=timeout), self._channels
        )
        cities = [
            CityPlan(r.city, _failure(r.city, r.error), None)
            if r.error is not None
            else CityPlan(r.city, CityOutcome(r.city, ANSWERED), plan_from_pb(r.response.plan))
            for r in replies
        ]
        negotiated, notes = negotiate(query, {c.city: c.plan for c in cities if c.plan})
        return negotiated, notes, cities

    def query(
        self,
        caller: VerifiedToken,
        query: Query,
        deadline_s: float | None,
        negotiate_shape: bool = False,
    ) -> Exchange:
        asked, notes = query, list[str]()
        if negotiate_shape:
            query, notes, _ = self.plan(caller, query, deadline_s)
        targets = self._targets(query.cities)
        request_id = new_request_id()
        signed = statements.sign_request(
            statements.QUERY,
            request_id,
            self.id,
            caller.issuer,
            caller.raw,
            query,
            self._signer,
            asked=asked,
            negotiation=notes,
        )
        request = node_pb2.RunQueryRequest(signed_query=envelope_to_pb(signed))
        timeout = self._city_timeout(deadline_s)
        replies = fan_out(
            targets, lambda stub: stub.RunQuery.future(request, timeout=timeout), self._channels
        )
        query_digest = statements.digest(signed.payload)
        bundle = self._trust.current
        outcomes = []
        for r in replies:
            if r.error is not None:
                outcomes.append(_failure(r.city, r.error))
                continue
            env = envelope_from_pb(r.response.signed_result)
            try:
                result = statements.verify_result(env, bundle)
                if (result["city"], result["request_id"], result["query_digest"]) != (
                    r.city,
                    request_id,
                    query_digest,
                ):
                    raise VerificationError(
                        "result does not answer this query", reason="RESULT_MISMATCH"
                    )
            except VerificationError as e:
                outcomes.append(CityOutcome(r.city, UNVERIFIED, "DATA_LOSS", e.reason, e.message))
                continue
            outcomes.append(
                CityOutcome(
                    r.city,
                    ANSWERED,
                    signed_result=env,
                    log_index=r.response.log_index,
                    verified_result=result,
                )
            )

        def jurisdiction(party_id: str) -> str:
            party = bundle.party(party_id)
            return party.jurisdiction if party else ""

        cells = merge.merge((o.city, o.verified_result) for o in outcomes if o.verified_result)
        receipt = dsse.sign(
            statements.RECEIPT,
            {
                "request_id": request_id,
                "query_digest": query_digest,
                "broker": self.id,
                "partner": caller.issuer,
                "purpose": query.purpose,
                "dataset": query.dataset,
                "cities": [
                    {
                        "city": o.city,
                        "status": o.status,
                        "code": o.code,
                        "reason": o.reason,
                        "result_digest": statements.digest(o.signed_result.payload)
                        if o.signed_result
                        else None,
                        "node_log_index": o.log_index if o.signed_result else None,
                        "jurisdiction": jurisdiction(o.city),
                    }
                    for o in outcomes
                ],
                "partner_jurisdiction": jurisdiction(caller.issuer),
                "answer_digest": statements.digest(dsse.canonical(merge.to_payload(cells))),
                "negotiation": notes,
                "issued_at": timefmt.fmt(timefmt.now()),
            },
            self._signer,
        )
        # One batch: the query as sent and the receipt of what came back, durable before replying.
        self._log.append_many([signed.to_json(), receipt.to_json()], kind=LogKind.EXCHANGE)
        self._after_log()
        return Exchange(request_id, cells, outcomes, signed, receipt, notes)

    def describe(self, caller: VerifiedToken, deadline_s: float | None) -> list[CityOffer]:
        bundle = self._trust.current
        cities = bundle.by_role(Role.CITY)
        signed = statements.sign_request(
            statements.DESCRIBE,
            str(uuid.uuid4()),
            self.id,
            caller.issuer,
            caller.raw,
            None,
            self._signer,
        )
        request = node_pb2.DescribeOfferRequest(signed_request=envelope_to_pb(signed))
        timeout = self._city_timeout(deadline_s)
        replies = fan_out(
            {c.id: c.endpoint for c in cities},
            lambda stub: stub.DescribeOffer.future(request, timeout=timeout),
            self._channels,
        )
        offers = []
        for city, r in zip(cities, replies, strict=True):
            if r.error is not None:
                offers.append(
                    CityOffer(city.id, city.name, city.jurisdiction, _failure(city.id, r.error))
                )
                continue
            offer = CityOffer(city.id, city.name, city.jurisdiction, CityOutcome(city.id, ANSWERED))
            for pb in r.response.agreements:
                env = envelope_from_pb(pb)
                try:
                    a = agreement_doc.verify(env, bundle)
                except VerificationError as e:
                    offer.outcome = CityOutcome(
                        city.id, UNVERIFIED, "DATA_LOSS", e.reason, e.message
                    )
                    continue
                if a.provider == city.id and a.consumer == caller.issuer:
                    offer.agreements.append((a, env))
            offers.append(offer)
        return offers
