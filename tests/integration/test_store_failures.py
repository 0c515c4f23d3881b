"""A store failing under a handler (database down or full) reaches the caller as UNAVAILABLE with a
reason, not INTERNAL, and names nothing of the statement; the next call is served normally."""

from __future__ import annotations

import sqlite3
from typing import Any, NoReturn

import grpc
import pytest
import sqlalchemy as sa

from broker.exchange import Broker
from citybroker.broker.v1 import broker_pb2
from edge.status import remote_error
from tests.integration.conftest import Wire

ANSWERED = broker_pb2.CITY_STATUS_ANSWERED


def _store_down(*args: Any, **kwargs: Any) -> NoReturn:
    raise sa.exc.OperationalError(
        "INSERT INTO secret_table", {}, sqlite3.OperationalError("disk I/O error")
    )


def _store_full(*args: Any, **kwargs: Any) -> NoReturn:
    raise sa.exc.OperationalError(
        "INSERT INTO secret_table", {}, sqlite3.OperationalError("database or disk is full")
    )


@pytest.mark.parametrize(
    ("failure", "reason"), [(_store_down, "STORE_UNAVAILABLE"), (_store_full, "STORE_FULL")]
)
def test_a_failing_store_is_unavailable_with_a_reason(
    wire: Wire, monkeypatch: pytest.MonkeyPatch, failure: Any, reason: str
) -> None:
    monkeypatch.setattr(Broker, "query", failure)
    with pytest.raises(grpc.RpcError) as info:
        wire.query()
    e = remote_error(info.value)
    assert (e.code, e.reason) == ("UNAVAILABLE", reason)
    assert "secret" not in e.message
    monkeypatch.undo()
    assert [c.status for c in wire.query().cities] == [ANSWERED] * 3
