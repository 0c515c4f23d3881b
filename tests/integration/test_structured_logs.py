"""Structured logs of real servers: JSON lines that carry the exchange id across the broker and the
nodes, and no personal data (no resident id of a consent granted or of a query's contributors)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from citybroker.broker.v1 import broker_pb2
from edge.operator_client import consent_record
from infra import logs
from infra.logs import LogFormat
from tests.conftest import PURPOSE
from tests.integration.conftest import Wire

BROKER_QUERY = "/citybroker.broker.v1.BrokerService/Query"
NODE_RUN_QUERY = "/citybroker.node.v1.QueryService/RunQuery"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What the process logs while the test runs, as `citybroker node serve` writes it (JSON)."""
    stream = io.StringIO()
    handler = logs.handler(LogFormat.JSON, stream)
    root, ours = logging.getLogger(), logging.getLogger("citybroker")
    level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_exchange_id_across_broker_and_nodes_and_no_resident_ids(
    fresh_wire: Wire, captured: io.StringIO
) -> None:
    rf = fresh_wire.rf
    resident = "aurora-resident-test-424242"
    rf.operators["aurora"].give_consents(
        [consent_record(f"{resident}-c1", resident, PURPOSE, rf.fed.partner_id, "mobility")]
    )
    answer = fresh_wire.query()
    assert all(c.status == broker_pb2.CITY_STATUS_ANSWERED for c in answer.cities)

    lines = _lines(captured)  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (broker_call,) = [line for line in lines if line.get("method") == BROKER_QUERY]
    assert broker_call["code"] == "OK" and broker_call["exchange_id"] == answer.query_id
    node_calls = [line for line in lines if line.get("method") == NODE_RUN_QUERY]
    assert len(node_calls) == 3
    assert {line["exchange_id"] for line in node_calls} == {answer.query_id}
    grants = [line for line in lines if line.get("method", "").endswith("/GiveConsent")]
    assert grants and all("exchange_id" not in line for line in grants)
    # No personal data: neither the resident just granted nor any resident who contributed.
    text = captured.getvalue()
    contributors = [r.resident_id for people in rf.consenting.values() for r in people]
    assert resident not in text
    assert not [r for r in contributors if r in text]
    assert PURPOSE not in text  # nor the query's terms
