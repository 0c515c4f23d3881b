"""An unexpected exception in a handler becomes INTERNAL "internal error": nothing of it reaches the
caller, the server logs it, and the next call is served normally."""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn

import grpc
import pytest

from broker.exchange import Broker
from citybroker.broker.v1 import broker_pb2
from citybroker.node.v1 import node_pb2
from domain import statements
from edge.status import remote_error
from edge.wire import envelope_to_pb
from node import aggregate
from tests.integration.conftest import Wire, by_mode

ANSWERED = broker_pb2.CITY_STATUS_ANSWERED


def _boom(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError("secret detail: /srv/city/db password=hunter2")


def _no_secret(err: grpc.RpcError) -> None:
    assert isinstance(err, grpc.Call)
    assert "secret" not in (err.details() or "")
    assert "Traceback" not in (err.details() or "")
    for _, value in err.trailing_metadata() or ():
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        assert "secret" not in text and "hunter2" not in text


def test_broker_handler_crash_is_internal(
    wire: Wire, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(Broker, "query", _boom)
    with (
        caplog.at_level(logging.ERROR, logger="citybroker.rpc"),
        pytest.raises(grpc.RpcError) as info,
    ):
        wire.query()
    e = remote_error(info.value)
    assert (e.code, e.message) == ("INTERNAL", "internal error")
    assert e.reason == ""
    _no_secret(info.value)
    # The operator still sees what happened, in the server's log.
    assert any("secret detail" in (r.exc_text or str(r.exc_info)) for r in caplog.records)
    monkeypatch.undo()
    assert [c.status for c in wire.query().cities] == [ANSWERED] * 3


def test_broker_keeps_serving_while_handlers_crash(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Broker, "describe", _boom)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            wire.broker().DescribeFederation(
                broker_pb2.DescribeFederationRequest(),
                metadata=wire.bearer_describe(),
                timeout=10,
            )
        assert remote_error(info.value).code == "INTERNAL"
        _no_secret(info.value)
        # Query is unaffected in between.
        assert [c.status for c in wire.query().cities] == [ANSWERED] * 3


def test_node_handler_crash_is_reported_per_city(
    wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aggregate.QueryCompiler, "run", _boom)
    response = wire.query()
    assert [(c.city_id, c.status, c.code, c.message) for c in response.cities] == [
        (c, broker_pb2.CITY_STATUS_FAILED, "INTERNAL", "internal error")
        for c in ("aurora", "borealis", "cascadia")
    ]
    assert "secret" not in str(response)
    monkeypatch.undo()
    assert [c.status for c in wire.query().cities] == [ANSWERED] * 3


def test_node_crash_seen_directly(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = wire.fed

    def signed_query() -> node_pb2.RunQueryRequest:
        env = statements.sign_request(
            statements.QUERY,
            statements.UnsignedRequest(
                str(uuid.uuid4()),
                fed.broker_id,
                fed.partner_id,
                wire.token(),
                by_mode(),
            ),
            fed.broker_signer,
        )
        return node_pb2.RunQueryRequest(signed_query=envelope_to_pb(env))

    stub = wire.node_query("borealis")
    monkeypatch.setattr(aggregate.QueryCompiler, "run", _boom)
    with pytest.raises(grpc.RpcError) as info:
        stub.RunQuery(signed_query(), timeout=10)
    e = remote_error(info.value)
    assert (e.code, e.message, e.reason) == ("INTERNAL", "internal error", "")
    _no_secret(info.value)
    monkeypatch.undo()
    assert stub.RunQuery(signed_query(), timeout=10).signed_result.payload
