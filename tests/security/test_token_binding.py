"""A broker cannot spend a partner's token on anything the partner did not ask.

Each attack is made with the broker's own signing key and mTLS certificate, as a dishonest broker
(or anyone who stole both) would: it wraps a token the partner sent for one call in a signed request
of its own making. The token names what it authorises (the call, the digest of the query as the
partner asked it, the cities asked, whether the broker may negotiate a coarser shape); the broker
checks it on arrival and every node checks it again, itself.
"""

from __future__ import annotations

import dataclasses
import uuid

import grpc
import pytest

from citybroker.broker.v1 import broker_pb2
from citybroker.node.v1 import node_pb2
from domain import statements
from domain.authorisation import grant_for
from domain.errors import RemoteError
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge.status import remote_error
from edge.wire import envelope_to_pb, query_to_pb
from keys.tokens import Call
from tests.integration.conftest import Wire, by_mode

ONE_CITY = dataclasses.replace(by_mode(), cities=("aurora",))
BY_DAY = Query(
    "mobility",
    by_mode().purpose,
    (Measure(MeasureKind.COUNT_RECORDS),),
    group_by=(Dimension("trip_date", "day"),),
)


def _token(wire: Wire, call: str, query: Query | None = None, negotiate: bool = False) -> str:
    """A token as the partner's client mints it for `call` (and `query`)."""
    return wire.token(grant=grant_for(Call(call), query, negotiate))


def _signed(
    wire: Wire,
    thing: str,
    token: str,
    query: Query | None,
    asked: Query | None = None,
) -> node_pb2.RunQueryRequest:
    """A request the broker signs with its own key, carrying the partner's `token`."""
    env = statements.sign_request(
        thing,
        statements.UnsignedRequest(
            str(uuid.uuid4()),
            wire.fed.broker_id,
            wire.fed.partner_id,
            token,
            query,
            asked=asked,
            negotiation=("coarser",) if asked is not None else (),
        ),
        wire.fed.broker_signer,
    )
    return node_pb2.RunQueryRequest(signed_query=envelope_to_pb(env))


def _node_refuses(wire: Wire, city: str, request: node_pb2.RunQueryRequest) -> RemoteError:
    with pytest.raises(grpc.RpcError) as info:
        wire.node_query(city).RunQuery(request, timeout=10)
    return remote_error(info.value)


def _node_plan_refuses(wire: Wire, city: str, request: node_pb2.RunQueryRequest) -> RemoteError:
    with pytest.raises(grpc.RpcError) as info:
        wire.node_query(city).PlanQuery(
            node_pb2.PlanQueryRequest(signed_request=request.signed_query), timeout=10
        )
    return remote_error(info.value)


def _broker_refuses(
    wire: Wire, token: str, query: Query | None = None, negotiate: bool = False
) -> RemoteError:
    with pytest.raises(grpc.RpcError) as info:
        if query is None:
            wire.broker().DescribeFederation(
                broker_pb2.DescribeFederationRequest(), metadata=wire.bearer(token), timeout=15
            )
        else:
            wire.broker().Query(
                broker_pb2.QueryRequest(query=query_to_pb(query), negotiate=negotiate),
                metadata=wire.bearer(token),
                timeout=15,
            )
    return remote_error(info.value)


def test_a_token_for_one_city_is_not_spent_at_another(wire: Wire) -> None:
    token = _token(wire, "query", ONE_CITY)
    response = wire.query(ONE_CITY, token=token)
    assert [(c.city_id, c.status) for c in response.cities] == [
        ("aurora", broker_pb2.CITY_STATUS_ANSWERED)
    ]
    # The broker re-addresses the partner's query to borealis, under the same token.
    elsewhere = dataclasses.replace(ONE_CITY, cities=("borealis",))
    e = _node_refuses(wire, "borealis", _signed(wire, statements.QUERY, token, elsewhere))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")
    # ... or sends borealis the very query the partner asked of aurora.
    e = _node_refuses(wire, "borealis", _signed(wire, statements.QUERY, token, ONE_CITY))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CITY_MISMATCH")
    # ... or dresses the re-addressed query up as a negotiation of the partner's.
    e = _node_refuses(
        wire, "borealis", _signed(wire, statements.QUERY, token, elsewhere, asked=ONE_CITY)
    )
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")


def test_a_describe_token_is_not_spent_on_a_query(wire: Wire) -> None:
    token = _token(wire, "describe")
    response = wire.broker().DescribeFederation(
        broker_pb2.DescribeFederationRequest(), metadata=wire.bearer(token), timeout=15
    )
    assert len(response.cities) == 3
    e = _node_refuses(wire, "aurora", _signed(wire, statements.QUERY, token, by_mode()))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CALL_MISMATCH")
    plan = _signed(wire, statements.PLAN, _token(wire, "describe"), by_mode())
    e = _node_plan_refuses(wire, "aurora", plan)
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CALL_MISMATCH")
    # Nor at the broker: a describe token is refused by Query, a query token by DescribeFederation.
    e = _broker_refuses(wire, _token(wire, "describe"), by_mode())
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CALL_MISMATCH")
    e = _broker_refuses(wire, _token(wire, "query", by_mode()))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CALL_MISMATCH")


def test_a_plan_token_is_not_spent_on_a_query(wire: Wire) -> None:
    token = _token(wire, "plan", by_mode())
    e = _node_refuses(wire, "aurora", _signed(wire, statements.QUERY, token, by_mode()))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CALL_MISMATCH")


@pytest.mark.parametrize(
    "other",
    [
        dataclasses.replace(by_mode(), measures=(Measure(MeasureKind.COUNT_RESIDENTS),)),
        dataclasses.replace(by_mode(), filters=(Filter("mode", FilterOp.EQUALS, ("bike",)),)),
        dataclasses.replace(by_mode(), group_by=(Dimension("mode"), Dimension("district"))),
        dataclasses.replace(by_mode(), cities=("aurora", "borealis")),
    ],
    ids=["measures", "filters", "group-by", "cities"],
)
def test_a_token_is_not_spent_on_another_query(wire: Wire, other: Query) -> None:
    token = _token(wire, "query", by_mode())
    e = _node_refuses(wire, "aurora", _signed(wire, statements.QUERY, token, other))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")
    # The broker refuses a partner's token sent with another query than it names, too.
    e = _broker_refuses(wire, _token(wire, "query", by_mode()), other)
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")


def test_coarsening_needs_the_partners_leave_and_stays_a_coarsening(wire: Wire) -> None:
    by_year = dataclasses.replace(BY_DAY, group_by=(Dimension("trip_date", "year"),))
    # Without the partner asking for negotiation, no coarser query may be sent.
    plain = _token(wire, "query", BY_DAY)
    e = _node_refuses(wire, "aurora", _signed(wire, statements.QUERY, plain, by_year, BY_DAY))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")
    e = _broker_refuses(wire, _token(wire, "query", BY_DAY), BY_DAY, negotiate=True)
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_NEGOTIATION_NOT_ALLOWED")
    # With it, a coarser shape of the same query is answered ...
    allowed = _token(wire, "query", BY_DAY, negotiate=True)
    response = wire.node_query("aurora").RunQuery(
        _signed(wire, statements.QUERY, allowed, by_year, BY_DAY), timeout=10
    )
    assert response.signed_result.payload
    # ... but not a finer one, nor one that also changes a filter, nor another asked query.
    finer = dataclasses.replace(BY_DAY, group_by=(Dimension("trip_date"),))
    filtered = dataclasses.replace(by_year, filters=(Filter("mode", FilterOp.EQUALS, ("bike",)),))
    for sent, asked in ((finer, BY_DAY), (filtered, BY_DAY), (by_year, by_mode())):
        token = _token(wire, "query", BY_DAY, negotiate=True)
        e = _node_refuses(wire, "aurora", _signed(wire, statements.QUERY, token, sent, asked))
        assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")


def test_a_query_token_with_negotiation_plans_only_its_own_query(wire: Wire) -> None:
    token = _token(wire, "query", BY_DAY, negotiate=True)
    request = _signed(wire, statements.PLAN, token, BY_DAY)
    plan = wire.node_query("aurora").PlanQuery(
        node_pb2.PlanQueryRequest(signed_request=request.signed_query), timeout=10
    )
    assert plan.plan.agreement_id
    token = _token(wire, "query", BY_DAY, negotiate=True)
    e = _node_plan_refuses(wire, "aurora", _signed(wire, statements.PLAN, token, by_mode()))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_QUERY_MISMATCH")
    # Without negotiation a query token plans nothing: that would be a second use of it.
    token = _token(wire, "query", BY_DAY)
    e = _node_plan_refuses(wire, "aurora", _signed(wire, statements.PLAN, token, BY_DAY))
    assert (e.code, e.reason) == ("PERMISSION_DENIED", "TOKEN_CALL_MISMATCH")
