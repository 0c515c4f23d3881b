"""The broker's gRPC edge: the partner-token guard and the BrokerService servicer."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import cast

import grpc

from broker.exchange import Broker
from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from domain import authorisation
from domain.errors import AuthenticationError, PermissionDenied
from edge.rpc import CALLER, Guard
from edge.wire import (
    describe_response_to_pb,
    federation_plan_to_pb,
    query_from_pb,
    query_response_to_pb,
)
from infra.consumed_tokens import ConsumedTokens
from infra.limits import LimitsConfig, PartnerLimiter
from keys import tokens
from keys.tokens import Call, VerifiedToken
from keys.trust import TrustStore

BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name
MAX_TOKEN_CHARS = 4096


# The call each BrokerService method is; a token authorises one (domain.authorisation).
_CALLS = {"Query": Call.QUERY, "PlanQuery": Call.PLAN, "DescribeFederation": Call.DESCRIBE}


def partner_token_guard(broker_id: str, trust: TrustStore, consumed: ConsumedTokens) -> Guard:
    """Authenticate `authorization: Bearer <jwt>`: signature, audience, expiry, issuer, that the
    token authorises this method's call, single use (in the broker's database: `consumed`). The
    servicer checks the query against the token once it has read the request."""

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
        call = _CALLS.get(method.rsplit("/", 1)[-1])
        if call is None:
            raise PermissionDenied(
                "no partner token authorises this method", reason="TOKEN_CALL_MISMATCH"
            )
        authorisation.check_call(verified, call)
        consumed.consume(verified, use="call")
        return verified

    return guard


class BrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    """BrokerService: each call is the authenticated partner's, converted to and from the domain,
    and admitted under that partner's limits (infra.limits) once its token is verified."""

    def __init__(self, broker: Broker, limits: LimitsConfig | None = None) -> None:
        self._broker = broker
        self._limits = limits or LimitsConfig()
        self._limiter = PartnerLimiter(self._limits.max_in_flight)

    def _admitted(self, caller: VerifiedToken) -> AbstractContextManager[None]:
        """The partner named by its verified token holds a place while the call runs."""
        return self._limiter.admit(caller.issuer, self._limits.allowance(caller.issuer))

    def Query(
        self, request: broker_pb2.QueryRequest, context: grpc.ServicerContext
    ) -> broker_pb2.QueryResponse:
        caller = cast(VerifiedToken, CALLER.get())
        query = query_from_pb(request.query)
        authorisation.check_call(caller, Call.QUERY, query, request.negotiate)
        with self._admitted(caller):
            exchange = self._broker.query(
                caller, query, context.time_remaining(), request.negotiate
            )
        return query_response_to_pb(exchange)

    def PlanQuery(
        self, request: broker_pb2.PlanQueryRequest, context: grpc.ServicerContext
    ) -> broker_pb2.PlanQueryResponse:
        caller = cast(VerifiedToken, CALLER.get())
        query = query_from_pb(request.query)
        authorisation.check_call(caller, Call.PLAN, query)
        with self._admitted(caller):
            plan = self._broker.plan(caller, query, context.time_remaining())
        return federation_plan_to_pb(plan)

    def DescribeFederation(
        self, request: broker_pb2.DescribeFederationRequest, context: grpc.ServicerContext
    ) -> broker_pb2.DescribeFederationResponse:
        caller = cast(VerifiedToken, CALLER.get())
        with self._admitted(caller):
            offers = self._broker.describe(caller, context.time_remaining())
        return describe_response_to_pb(offers)
