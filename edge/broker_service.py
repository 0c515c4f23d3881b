"""The broker's gRPC edge: the partner-token guard and the BrokerService servicer."""

from __future__ import annotations

from typing import cast

import grpc

from broker.exchange import Broker, CityOffer, CityOutcome
from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from citybroker.common.v1 import common_pb2
from domain.errors import AuthenticationError
from edge.rpc import CALLER, Guard
from edge.wire import envelope_to_pb, plan_to_pb, query_from_pb, query_to_pb
from keys import timefmt, tokens
from keys.tokens import VerifiedToken
from keys.trust import TrustStore

BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name
MAX_TOKEN_CHARS = 4096

_STATUS = {
    "answered": broker_pb2.CITY_STATUS_ANSWERED,
    "refused": broker_pb2.CITY_STATUS_REFUSED,
    "failed": broker_pb2.CITY_STATUS_FAILED,
    "timed_out": broker_pb2.CITY_STATUS_TIMED_OUT,
    "unverified": broker_pb2.CITY_STATUS_UNVERIFIED,
}


def partner_token_guard(broker_id: str, trust: TrustStore) -> Guard:
    """Authenticate `authorization: Bearer <jwt>`: signature, audience, expiry, issuer, single use."""
    replay = tokens.ReplayCache()

    def guard(context: grpc.ServicerContext, method: str) -> VerifiedToken:
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if not values:
            raise AuthenticationError(
                "missing `authorization: Bearer <token>` metadata", reason="TOKEN_MISSING"
            )
        value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError(
                "authorization must be `Bearer <token>`", reason="TOKEN_MALFORMED"
            )
        verified = tokens.verify(token.strip(), trust.current, audience=broker_id)
        replay.consume(verified)
        return verified

    return guard


def _outcome_pb(o: CityOutcome) -> broker_pb2.CityOutcome:
    return broker_pb2.CityOutcome(
        city_id=o.city,
        status=_STATUS[o.status],
        code=o.code,
        reason=o.reason,
        message=o.message,
        signed_result=envelope_to_pb(o.signed_result) if o.signed_result else None,
        log_index=o.log_index,
    )


def _offer_pb(offer: CityOffer) -> broker_pb2.CityOffer:
    return broker_pb2.CityOffer(
        city_id=offer.city,
        name=offer.name,
        jurisdiction=offer.jurisdiction,
        outcome=_outcome_pb(offer.outcome),
        agreements=[
            broker_pb2.AgreementSummary(
                agreement_id=a.agreement_id,
                version=a.version,
                purposes=sorted(a.purposes),
                datasets=[
                    broker_pb2.DatasetTerms(
                        dataset=ds,
                        fields=[
                            broker_pb2.FieldTerms(
                                field=f,
                                appearance=t.appearance.value,
                                generalisations=sorted(t.generalisations),
                            )
                            for f, t in sorted(fields.items())
                        ],
                    )
                    for ds, fields in sorted(a.datasets.items())
                ],
                min_cell_size=a.min_cell_size,
                valid_from=timefmt.fmt(a.valid_from),
                valid_until=timefmt.fmt(a.valid_until),
                signed_agreement=envelope_to_pb(env),
            )
            for a, env in offer.agreements
        ],
    )


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def Query(
        self, request: broker_pb2.QueryRequest, context: grpc.ServicerContext
    ) -> broker_pb2.QueryResponse:
        caller = cast(VerifiedToken, CALLER.get())
        exchange = self._broker.query(
            caller, query_from_pb(request.query), context.time_remaining(), request.negotiate
        )
        return broker_pb2.QueryResponse(
            query_id=exchange.request_id,
            cells=[
                common_pb2.Cell(
                    key=c.key,
                    values=c.values,
                    withheld=c.withheld,
                    contributing_cities=c.contributing,
                    withholding_cities=c.withholding,
                )
                for c in exchange.cells
            ],
            cities=[_outcome_pb(o) for o in exchange.outcomes],
            signed_query=envelope_to_pb(exchange.signed_query),
            receipt=envelope_to_pb(exchange.receipt),
            negotiation_notes=exchange.negotiation,
            records=[
                common_pb2.ReleasedRecord(
                    city_id=o.city, pseudonym=r["pseudonym"], fields=r["fields"]
                )
                for o in exchange.outcomes
                if o.verified_result
                for r in o.verified_result.get("records", [])
            ],
        )

    def PlanQuery(
        self, request: broker_pb2.PlanQueryRequest, context: grpc.ServicerContext
    ) -> broker_pb2.PlanQueryResponse:
        caller = cast(VerifiedToken, CALLER.get())
        negotiated, notes, cities = self._broker.plan(
            caller, query_from_pb(request.query), context.time_remaining()
        )
        return broker_pb2.PlanQueryResponse(
            negotiated=query_to_pb(negotiated),
            notes=notes,
            cities=[
                broker_pb2.CityPlan(
                    city_id=c.city,
                    outcome=_outcome_pb(c.outcome),
                    plan=plan_to_pb(c.plan) if c.plan else None,
                )
                for c in cities
            ],
        )

    def DescribeFederation(
        self, request: broker_pb2.DescribeFederationRequest, context: grpc.ServicerContext
    ) -> broker_pb2.DescribeFederationResponse:
        caller = cast(VerifiedToken, CALLER.get())
        offers = self._broker.describe(caller, context.time_remaining())
        return broker_pb2.DescribeFederationResponse(cities=[_offer_pb(o) for o in offers])
