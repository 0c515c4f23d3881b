"""A small client for partner services: ask the federation, and verify everything it answers.

    client = PartnerClient.connect("127.0.0.1:7000", broker_id="broker-1", partner_id="partner-x",
                                   key=Signer.load(Path("partner.key")), ca_cert=Path("ca.crt"),
                                   trust_bundle=Path("trust-bundle.json"),
                                   authority_key=Path("authority.pub"))
    answer = client.query(Query(dataset="mobility", purpose="urban-mobility-planning",
                                measures=(Measure(MeasureKind.COUNT_RECORDS),)))
    answer.cells, answer.cities, answer.signatures_verified

Each call mints a fresh single-use token bound to that call and query (domain.authorisation).
`query` verifies the broker's signed query, every city's signed result and the broker's receipt
against the trust bundle, and recomputes the merged answer from the verified results;
`describe_federation` verifies every agreement it lists. Any mismatch
raises VerificationError. Every method returns domain types; protobuf stays inside this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from broker import merge
from broker.outcomes import CityOffer, FederationPlan
from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from domain import agreement as agreement_doc
from domain import commitment, statements
from domain import receipt as receipt_doc
from domain.authorisation import grant_for
from domain.errors import CallFailed, InvalidArgument, VerificationError
from domain.plan import is_coarsening
from domain.query import Query
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.status import remote_error
from edge.wire import (
    CITY_STATUS_NAMES,
    city_outcome_from_pb,
    envelope_from_pb,
    federation_plan_from_pb,
    query_from_pb,
    query_to_pb,
)
from keys import tokens, trust
from keys.ed25519 import Signer
from keys.tokens import Call
from keys.trust import TrustBundle


@dataclass(frozen=True)
class CityAnswer:
    """One city's outcome as the broker returned it (checked against the broker's receipt)."""

    city: str
    status: str
    code: str
    reason: str
    message: str
    log_index: int


@dataclass(frozen=True)
class Answer:
    """A verified answer: merged cells recomputed from the cities' verified results."""

    query_id: str
    cells: list[merge.MergedCell]
    cities: list[CityAnswer]
    receipt: dict[str, Any]
    signatures_verified: int
    # What negotiation changed and why (signed by the broker), and the query the cities answered.
    negotiation: tuple[str, ...] = ()
    answered_query: Query | None = None
    # A record release's records from the verified city results: {"city", "pseudonym", "fields"}.
    records: list[dict[str, Any]] = field(default_factory=list)


# A city's verified result and the digest of its signed payload, or, when the city logged it as
# a salted commitment (domain.commitment), that commitment (the receipt names it so), and which.
_Result = tuple[dict[str, Any], str, bool]


class PartnerClient:
    """A partner's connection to one broker; use as a context manager, or close() it."""

    def __init__(
        self,
        channel: grpc.Channel,
        broker_id: str,
        partner_id: str,
        key: Signer,
        bundle: TrustBundle,
    ) -> None:
        self._channel = channel
        self._stub = broker_pb2_grpc.BrokerServiceStub(channel)
        self.broker_id, self.partner_id, self._key, self.bundle = (
            broker_id,
            partner_id,
            key,
            bundle,
        )

    @classmethod
    def connect(
        cls,
        address: str,
        broker_id: str,
        partner_id: str,
        key: Signer,
        ca_cert: Path,
        trust_bundle: Path,
        authority_key: Path,
    ) -> PartnerClient:
        """Open a TLS channel to the broker at `address`, trusting the verified trust bundle."""
        bundle = trust.load_bundle(trust_bundle, trust.load_authority_key(authority_key))
        channel = grpc.secure_channel(
            address, client_credentials(ca_cert.read_bytes()), options=CHANNEL_OPTIONS
        )
        return cls(channel, broker_id, partner_id, key, bundle)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> PartnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self, grant: tokens.Grant) -> list[tuple[str, str]]:
        """A fresh single-use token, minted from the partner's key, authorising `grant` only."""
        token = tokens.issue(self._key, self.partner_id, self.broker_id, grant, lifetime_s=60)
        return [("authorization", f"Bearer {token}")]

    def query(self, query: Query, timeout_s: float = 15.0, negotiate: bool = False) -> Answer:
        """Ask; with `negotiate` the broker may coarsen generalisations to the finest shape every
        asked city allows (Answer.negotiation says what changed, signed by the broker)."""
        try:
            response = self._stub.Query(
                broker_pb2.QueryRequest(query=query_to_pb(query), negotiate=negotiate),
                metadata=self._metadata(grant_for(Call.QUERY, query, negotiate)),
                timeout=timeout_s,
            )
        except grpc.RpcError as e:
            raise CallFailed(remote_error(e)) from None
        return self.verify(query, response)

    def describe_federation(self, timeout_s: float = 15.0) -> list[CityOffer]:
        """What each city lets this partner ask: its verified agreements, or why it did not say."""
        try:
            response: broker_pb2.DescribeFederationResponse = self._stub.DescribeFederation(
                broker_pb2.DescribeFederationRequest(),
                metadata=self._metadata(grant_for(Call.DESCRIBE)),
                timeout=timeout_s,
            )
        except grpc.RpcError as e:
            raise CallFailed(remote_error(e)) from None
        return [self._verified_offer(pb) for pb in response.cities]

    def _verified_offer(self, pb: broker_pb2.CityOffer) -> CityOffer:
        """A city's offer with only the agreements that verify against this partner's trust
        bundle and bind that city to this partner (the broker's own describe keeps the same
        rule), so an unverifiable listing is never shown as something the partner may ask."""
        offer = CityOffer(pb.city_id, pb.name, pb.jurisdiction, city_outcome_from_pb(pb.outcome))
        for summary in pb.agreements:
            env = envelope_from_pb(summary.signed_agreement)
            try:
                verified = agreement_doc.verify(env, self.bundle)
            except VerificationError:
                continue
            if (verified.provider, verified.consumer) == (pb.city_id, self.partner_id):
                offer.agreements.append((verified, env))
        return offer

    def verify(self, asked: Query, response: broker_pb2.QueryResponse) -> Answer:
        """The Answer, its cells recomputed from the verified city results and
        `signatures_verified` counting every signature checked; VerificationError when any
        signature fails or any statement (query, results, receipt, cells) disagrees with another."""
        request = self._verified_request(asked, response)
        results, cities = self._verified_results(request, response)
        receipt = self._verified_receipt(request, response, results, cities)
        cells = _verified_cells(response, receipt, results)
        released = [
            {"city": city, **record}
            for city, (r, _, _) in results.items()
            for record in r.get("records", [])
        ]
        return Answer(
            response.query_id,
            cells,
            cities,
            receipt,
            # The broker's query and receipt, and each answering city's result.
            2 + sum(c.status == "answered" for c in cities),
            request.negotiation,
            request.query,
            released,
        )

    def _verified_request(
        self, asked: Query, response: broker_pb2.QueryResponse
    ) -> statements.BrokerRequest:
        """The broker's verified signed query; VerificationError unless it is between this broker
        and partner and is the query asked (or, if the broker negotiated, a coarsening of it)."""
        signed_query = envelope_from_pb(response.signed_query)
        request = statements.verify_request(signed_query, statements.QUERY, self.bundle)
        if request.broker != self.broker_id or request.partner != self.partner_id:
            raise VerificationError(
                "the broker signed a query for another party", reason="QUERY_MISMATCH"
            )
        assert request.query is not None
        negotiated = request.asked == asked and is_coarsening(asked, request.query)
        if request.query != asked and not negotiated:
            raise VerificationError(
                "the broker sent the cities a different query", reason="QUERY_MISMATCH"
            )
        return request

    def _verified_results(
        self, request: statements.BrokerRequest, response: broker_pb2.QueryResponse
    ) -> tuple[dict[str, _Result], list[CityAnswer]]:
        """Each answering city's verified result with its payload digest, by city, and every city's
        outcome as returned, in order; VerificationError if a result answers another query."""
        results: dict[str, _Result] = {}
        cities = []
        for c in response.cities:
            status = CITY_STATUS_NAMES.get(c.status, "unspecified")
            if status == "answered":
                env = envelope_from_pb(c.signed_result)
                result = statements.verify_result(env, self.bundle)
                if (result["city"], result["query_digest"]) != (c.city_id, request.digest):
                    raise VerificationError(
                        f"result of {c.city_id} answers another query", reason="RESULT_MISMATCH"
                    )
                results[c.city_id] = (result, _result_name(env, c.result_salt), bool(c.result_salt))
            cities.append(CityAnswer(c.city_id, status, c.code, c.reason, c.message, c.log_index))
        return results, cities

    def _verified_receipt(
        self,
        request: statements.BrokerRequest,
        response: broker_pb2.QueryResponse,
        results: dict[str, _Result],
        cities: list[CityAnswer],
    ) -> dict[str, Any]:
        """The broker's verified receipt; VerificationError unless it is for `request` and this
        partner and lists exactly the outcomes returned, in order."""
        receipt = statements.verify_receipt(envelope_from_pb(response.receipt), self.bundle)
        # A query naming a resident is named by the broker's salted commitment to it.
        if response.query_salt:
            named = receipt.get("query_commitment")
            expected = _committed(response.query_salt, envelope_from_pb(response.signed_query))
        else:
            named, expected = receipt.get("query_digest"), request.digest
        if named != expected or receipt["partner"] != self.partner_id:
            raise VerificationError("the receipt is for another query", reason="RECEIPT_MISMATCH")
        # Every city's outcome as returned (status, code, reason, result, node log index) must be
        # the one the broker signed, city by city and in order.
        receipted = [
            (*o, c.get("result_commitment"))
            for o, c in zip(
                receipt_doc.listed_outcomes(receipt),
                [c for c in receipt.get("cities", []) if isinstance(c, dict)],
                strict=True,
            )
        ]
        returned_outcomes = [
            (c.city, c.status, c.code, c.reason) + _named_result(results.get(c.city), c.log_index)
            for c in cities
        ]
        if receipted != returned_outcomes:
            raise VerificationError(
                "the receipt does not list the outcomes returned", reason="RECEIPT_MISMATCH"
            )
        return receipt

    def plan(self, query: Query, timeout_s: float = 15.0) -> FederationPlan:
        """A dry run: each city's plan and the shape negotiation would choose. Reads no data."""
        return federation_plan_from_pb(self._plan_response(query, timeout_s))

    def plan_json(self, query: Query, timeout_s: float = 15.0) -> str:
        """The dry run's PlanQueryResponse exactly as the broker sent it, as protobuf JSON, so that
        scripts read the documented message."""
        return json_format.MessageToJson(self._plan_response(query, timeout_s))

    def _plan_response(self, query: Query, timeout_s: float) -> broker_pb2.PlanQueryResponse:
        try:
            response: broker_pb2.PlanQueryResponse = self._stub.PlanQuery(
                broker_pb2.PlanQueryRequest(query=query_to_pb(query)),
                metadata=self._metadata(grant_for(Call.PLAN, query)),
                timeout=timeout_s,
            )
        except grpc.RpcError as e:
            raise CallFailed(remote_error(e)) from None
        return response


def query_of_request_json(text: str) -> tuple[Query, bool]:
    """The query and negotiate flag of a QueryRequest (or PlanQueryRequest) in protobuf JSON, as
    `buf curl -d` sends it: what a token for that request must name. InvalidArgument if it is not
    one, or its query is not valid."""
    try:
        request = json_format.Parse(text, broker_pb2.QueryRequest())
    except (json_format.ParseError, RecursionError) as e:
        raise InvalidArgument(
            f"not a QueryRequest in protobuf JSON: {e}", reason="REQUEST_MALFORMED"
        ) from None
    return query_from_pb(request.query), request.negotiate


def _committed(salt: bytes, env: Any) -> str:
    """The salted commitment to a signed statement; VerificationError if the salt is malformed."""
    try:
        return commitment.digest(salt, env.to_json())
    except ValueError:
        raise VerificationError(
            "a commitment's salt is malformed", reason="RECEIPT_MISMATCH"
        ) from None


def _result_name(env: Any, salt: bytes) -> str:
    """How the receipt names a city's result: its payload digest, or the commitment to it."""
    return _committed(salt, env) if salt else statements.digest(env.payload)


def _named_result(result: _Result | None, log_index: int) -> tuple[Any, ...]:
    """A returned outcome's (result_digest, node_log_index, result_commitment), as a receipt
    lists them for it."""
    if result is None:
        return (None, None, None)
    _, name, committed = result
    return (None, log_index, name) if committed else (name, log_index, None)


def _verified_cells(
    response: broker_pb2.QueryResponse, receipt: dict[str, Any], results: dict[str, _Result]
) -> list[merge.MergedCell]:
    """The cells merged from the verified results; VerificationError unless the receipt's answer
    digest matches them and the broker returned exactly these cells."""
    cells = merge.merge((city, r) for city, (r, _, _) in results.items())
    if receipt_doc.answer_digest(merge.to_payload(cells)) != receipt["answer_digest"]:
        raise VerificationError(
            "the merged answer does not match the signed results", reason="ANSWER_MISMATCH"
        )
    returned = [(dict(c.key), dict(c.values), c.withheld) for c in response.cells]
    if returned != [(c.key, c.values, c.withheld) for c in cells]:
        raise VerificationError(
            "the broker's merged cells differ from the signed results", reason="ANSWER_MISMATCH"
        )
    return cells
