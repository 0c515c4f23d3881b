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

from audit.log import MerkleLog
from broker import merge
from broker.gateway import CityGateway, CityReply, SignedResult
from broker.outcomes import (
    ANSWERED,
    FAILED,
    REFUSED,
    TIMED_OUT,
    UNVERIFIED,
    CityOffer,
    CityOutcome,
    CityPlan,
    Exchange,
    FederationPlan,
)
from broker.query_evidence import logged_query
from domain import agreement as agreement_doc
from domain import commitment, statements
from domain import receipt as receipt_doc
from domain.errors import InvalidArgument, RemoteError, VerificationError
from domain.kinds import LogKind
from domain.plan import negotiate
from domain.query import Query
from infra import logs
from infra.metrics import CITY_OUTCOMES
from keys.ed25519 import Signer
from keys.tokens import VerifiedToken
from keys.trust import Role, TrustBundle, TrustStore

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


def _failure(city: str, error: RemoteError) -> CityOutcome:
    if error.code == "DEADLINE_EXCEEDED":
        status = TIMED_OUT
    elif error.code in _REFUSAL_CODES:
        status = REFUSED
    else:
        status = FAILED
    return CityOutcome(city, status, error.code, error.reason, error.message)


def _verified_outcome(
    reply: CityReply[SignedResult], request_id: str, query_digest: str, bundle: TrustBundle
) -> CityOutcome:
    """A city's outcome: its error, or its signed result if that verifies and answers this query."""
    if reply.error is not None or reply.value is None:
        return _failure(reply.city, reply.error or RemoteError("UNKNOWN", "", "no reply"))
    env = reply.value.envelope
    try:
        result = statements.verify_result(env, bundle)
        if (result["city"], result["request_id"], result["query_digest"]) != (
            reply.city,
            request_id,
            query_digest,
        ):
            raise VerificationError("result does not answer this query", reason="RESULT_MISMATCH")
        if reply.value.salt and len(reply.value.salt) != commitment.SALT_BYTES:
            raise VerificationError(
                "the salt of the city's commitment to its result is malformed",
                reason="RESULT_COMMITMENT_MALFORMED",
            )
    except VerificationError as e:
        return CityOutcome(reply.city, UNVERIFIED, "DATA_LOSS", e.reason, e.message)
    return CityOutcome(
        reply.city,
        ANSWERED,
        signed_result=env,
        log_index=reply.value.log_index,
        verified_result=result,
        result_salt=reply.value.salt,
    )


class Broker:
    """Plans, runs and describes federated exchanges; cities are reached through `gateway`."""

    def __init__(
        self,
        broker_id: str,
        signer: Signer,
        trust: TrustStore,
        gateway: CityGateway,
        log: MerkleLog,
        city_timeout_s: float = 5.0,
        after_log: Callable[[], None] = lambda: None,
    ) -> None:
        self.id, self._signer, self._trust, self._gateway, self._log = (
            broker_id,
            signer,
            trust,
            gateway,
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

    def plan(self, caller: VerifiedToken, query: Query, deadline_s: float | None) -> FederationPlan:
        """Ask every city for its dry-run plan; negotiate the finest shape they all allow."""
        targets = self._targets(query.cities)
        signed = statements.sign_request(
            statements.PLAN,
            statements.UnsignedRequest(
                str(uuid.uuid4()), self.id, caller.issuer, caller.raw, query
            ),
            self._signer,
        )
        replies = self._gateway.plan_query(targets, signed, self._city_timeout(deadline_s))
        cities = [
            CityPlan(r.city, _failure(r.city, r.error), None)
            if r.error is not None
            else CityPlan(r.city, CityOutcome(r.city, ANSWERED), r.value)
            for r in replies
        ]
        negotiated, notes = negotiate(query, {c.city: c.plan for c in cities if c.plan})
        return FederationPlan(negotiated, notes, cities)

    def query(
        self,
        caller: VerifiedToken,
        query: Query,
        deadline_s: float | None,
        negotiate_shape: bool = False,
    ) -> Exchange:
        """Ask the cities (after negotiating the shape, if asked), verify and merge their results,
        and log the signed query with a signed receipt of every city's outcome before returning."""
        asked, notes = query, list[str]()
        if negotiate_shape:
            planned = self.plan(caller, query, deadline_s)
            query, notes = planned.negotiated, planned.notes
        targets = self._targets(query.cities)
        request_id = new_request_id()
        logs.bind_exchange(request_id)
        signed = statements.sign_request(
            statements.QUERY,
            statements.UnsignedRequest(
                request_id,
                self.id,
                caller.issuer,
                caller.raw,
                query,
                asked=asked,
                negotiation=tuple(notes),
            ),
            self._signer,
        )
        replies = self._gateway.run_query(targets, signed, self._city_timeout(deadline_s))
        query_digest = statements.digest(signed.payload)
        bundle = self._trust.current
        outcomes = [_verified_outcome(r, request_id, query_digest, bundle) for r in replies]
        for o in outcomes:
            CITY_OUTCOMES.labels(o.city, o.status, o.code).inc()
        cells = merge.merge((o.city, o.verified_result) for o in outcomes if o.verified_result)
        # A query naming a resident is logged, and named by the receipt, as a commitment.
        logged = logged_query(self.id, request_id, query, signed, self._signer)
        receipt = receipt_doc.Receipt(
            request_id,
            query_digest,
            self.id,
            caller.issuer,
            _jurisdiction(bundle, caller.issuer),
            query.purpose,
            query.dataset,
            tuple(_receipt_entry(o, bundle) for o in outcomes),
            receipt_doc.answer_digest(merge.to_payload(cells)),
            tuple(notes),
            query_commitment=logged.commitment,
        )
        signed_receipt = receipt_doc.sign(receipt, self._signer)
        # One batch: the query as sent and the receipt of what came back, durable before replying.
        self._log.append_many(
            [logged.entry, signed_receipt.to_json()],
            kind=LogKind.EXCHANGE,
            side_write=logged.side_write,
        )
        self._after_log()
        return Exchange(
            request_id, cells, outcomes, signed, signed_receipt, notes, query_salt=logged.salt
        )

    def describe(self, caller: VerifiedToken, deadline_s: float | None) -> list[CityOffer]:
        """Each city's agreements with the caller that verify, or what went wrong with that city."""
        bundle = self._trust.current
        cities = bundle.by_role(Role.CITY)
        signed = statements.sign_request(
            statements.DESCRIBE,
            statements.UnsignedRequest(str(uuid.uuid4()), self.id, caller.issuer, caller.raw, None),
            self._signer,
        )
        replies = self._gateway.describe_offer(
            {c.id: c.endpoint for c in cities}, signed, self._city_timeout(deadline_s)
        )
        offers = []
        for city, r in zip(cities, replies, strict=True):
            if r.error is not None:
                offers.append(
                    CityOffer(city.id, city.name, city.jurisdiction, _failure(city.id, r.error))
                )
                continue
            offer = CityOffer(city.id, city.name, city.jurisdiction, CityOutcome(city.id, ANSWERED))
            for env in r.value or []:
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


def _jurisdiction(bundle: TrustBundle, party_id: str) -> str:
    party = bundle.party(party_id)
    return party.jurisdiction if party else ""


def _receipt_entry(o: CityOutcome, bundle: TrustBundle) -> receipt_doc.CityEntry:
    signed = o.signed_result
    # A result the city logged as a commitment is named by that commitment, not by its digest.
    committed = (
        commitment.digest(o.result_salt, signed.to_json()) if signed and o.result_salt else None
    )
    return receipt_doc.CityEntry(
        o.city,
        o.status,
        o.code,
        o.reason,
        statements.digest(signed.payload) if signed and not committed else None,
        o.log_index if signed else None,
        _jurisdiction(bundle, o.city),
        result_commitment=committed,
    )
