"""Single use that survives restarts, and broker statements that must be of now.

A captured broker query replayed after the node restarted must be refused as a replay (the
consumed token ids live in the node's database, not its memory), and so must a partner token
replayed at a restarted broker. A broker statement issued far in the future, or longer ago than a
token can live, is refused whatever it carries.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest

from broker.config import BrokerConfig
from citybroker.broker.v1 import broker_pb2
from citybroker.node.v1 import node_pb2
from domain import statements
from domain.errors import RemoteError
from edge.broker_server import BrokerServer
from edge.node_server import NodeServer
from edge.status import remote_error
from edge.wire import envelope_to_pb, query_to_pb
from keys import dsse, timefmt, tokens
from node.config import NodeConfig
from tests.integration.conftest import Wire, by_mode


def _signed_query(
    wire: Wire, token: str, issued_at_offset_s: float = 0
) -> node_pb2.RunQueryRequest:
    """A broker-signed query of `by_mode()` carrying `token`, issued now plus the offset."""
    issued = timefmt.now() + timedelta(seconds=issued_at_offset_s)
    payload = {
        "request_id": str(uuid.uuid4()),
        "broker": wire.fed.broker_id,
        "partner": wire.fed.partner_id,
        "token": token,
        "issued_at": timefmt.fmt(issued),
        "query": by_mode().to_payload(),
    }
    env = dsse.sign(statements.QUERY, payload, wire.fed.broker_signer)
    return node_pb2.RunQueryRequest(signed_query=envelope_to_pb(env))


def _refused(wire: Wire, city: str, request: node_pb2.RunQueryRequest) -> RemoteError:
    with pytest.raises(grpc.RpcError) as info:
        wire.node_query(city).RunQuery(request, timeout=10)
    return remote_error(info.value)


def _restart_node(wire: Wire, city: str) -> None:
    rf = wire.rf
    rf.nodes[city].stop(0)
    rf.nodes[city] = NodeServer(NodeConfig.load(rf.fed.cities[city].config)).start()


def test_a_captured_query_replayed_after_a_node_restart_is_a_replay(fresh_wire: Wire) -> None:
    wire = fresh_wire
    token = wire.token()
    captured = _signed_query(wire, token)
    assert wire.node_query("aurora").RunQuery(captured, timeout=10).signed_result.payload
    _restart_node(wire, "aurora")
    # The very request, and the token inside a newly signed one: both are replays.
    for request in (captured, _signed_query(wire, token)):
        e = _refused(wire, "aurora", request)
        assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_REPLAYED")


def test_a_token_replayed_after_a_broker_restart_is_a_replay(fresh_wire: Wire) -> None:
    wire = fresh_wire
    token = wire.token()
    assert wire.query(token=token).cities
    rf = wire.rf
    rf.broker.stop(0)
    rf.broker = BrokerServer(BrokerConfig.load(rf.fed.broker_config)).start()
    with pytest.raises(grpc.RpcError) as info:
        wire.broker().Query(
            broker_pb2.QueryRequest(query=query_to_pb(by_mode())),
            metadata=wire.bearer(token),
            timeout=15,
        )
    e = remote_error(info.value)
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_REPLAYED")


@pytest.mark.parametrize(
    ("offset_s", "reason"),
    [
        (365 * 24 * 3600, "STATEMENT_FROM_FUTURE"),
        (tokens.CLOCK_SKEW_S + 30, "STATEMENT_FROM_FUTURE"),
        (-(tokens.MAX_LIFETIME_S + tokens.CLOCK_SKEW_S + 30), "STATEMENT_TOO_OLD"),
        (-365 * 24 * 3600, "STATEMENT_TOO_OLD"),
    ],
)
def test_a_statement_not_of_now_is_refused(wire: Wire, offset_s: int, reason: str) -> None:
    e = _refused(wire, "borealis", _signed_query(wire, wire.token(), offset_s))
    assert (e.code, e.reason) == ("UNAUTHENTICATED", reason)


@pytest.mark.parametrize("offset_s", [tokens.CLOCK_SKEW_S - 10, -tokens.MAX_LIFETIME_S])
def test_a_statement_within_the_skew_is_answered(wire: Wire, offset_s: int) -> None:
    response = wire.node_query("borealis").RunQuery(
        _signed_query(wire, wire.token(), offset_s), timeout=10
    )
    assert response.signed_result.payload


def test_a_token_issued_in_the_future_is_refused(wire: Wire) -> None:
    now = timefmt.now().timestamp()
    future = int(now) + tokens.CLOCK_SKEW_S + 60
    token = wire.token(iat=future, exp=future + 60)
    e = _refused(wire, "borealis", _signed_query(wire, token))
    assert (e.code, e.reason) == ("UNAUTHENTICATED", "TOKEN_NOT_YET_VALID")
