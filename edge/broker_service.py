"""The broker's gRPC edge: the partner-token guard and the BrokerService servicer."""

from __future__ import annotations

from typing import cast

import grpc

from broker.exchange import Broker
from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from domain.errors import AuthenticationError
from edge.rpc import CALLER, Guard
from edge.wire import (
    describe_response_to_pb,
    federation_plan_to_pb,
    query_from_pb,
    query_response_to_pb,
)
from keys import tokens
from keys.tokens import VerifiedToken
from keys.trust import TrustStore

BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name
MAX_TOKEN_CHARS = 4096


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


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    """BrokerService: each call is the authenticated partner's, converted to and from the domain."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def Query(
        self, request: broker_pb2.QueryRequest, context: grpc.ServicerContext
    ) -> broker_pb2.QueryResponse:
        caller = cast(VerifiedToken, CALLER.get())
        exchange = self._broker.query(
            caller, query_from_pb(request.query), context.time_remaining(), request.negotiate
        )
        return query_response_to_pb(exchange)

    def PlanQuery(
        self, request: broker_pb2.PlanQueryRequest, context: grpc.ServicerContext
    ) -> broker_pb2.PlanQueryResponse:
        caller = cast(VerifiedToken, CALLER.get())
        plan = self._broker.plan(caller, query_from_pb(request.query), context.time_remaining())
        return federation_plan_to_pb(plan)

    def DescribeFederation(
        self, request: broker_pb2.DescribeFederationRequest, context: grpc.ServicerContext
    ) -> broker_pb2.DescribeFederationResponse:
        caller = cast(VerifiedToken, CALLER.get())
        offers = self._broker.describe(caller, context.time_remaining())
        return describe_response_to_pb(offers)
