"""A city that is down or slow is reported by name, and the other cities still answer."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig
from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from edge.broker_server import BrokerServer
from edge.partner_client import PartnerClient
from edge.wire import query_to_pb
from node.answering import Answerer
from tests.conftest import RunningFederation
from tests.integration.conftest import Wire, by_mode

SLOW_CITY = "cascadia"


def _client(rf: RunningFederation, address: str) -> PartnerClient:
    f = rf.fed
    return PartnerClient.connect(
        address,
        f.broker_id,
        f.partner_id,
        f.partner_signer,
        f.ca_cert,
        f.trust_bundle,
        f.authority_key,
    )


@pytest.fixture
def slow_city(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """SLOW_CITY's node holds every query until the test ends (or 10 s pass)."""
    release = threading.Event()
    original = Answerer.run_query

    def run_query(self: Answerer, *args: Any, **kwargs: Any) -> Any:
        if self._s.city == SLOW_CITY:
            release.wait(10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Answerer, "run_query", run_query)
    yield release
    release.set()


@pytest.fixture
def impatient_broker(fresh_federation: RunningFederation, tmp_path: Path) -> Iterator[str]:
    """A second broker (same identity, own log) that gives each city 1.5 s; yields its address."""
    config = dataclasses.replace(
        BrokerConfig.load(fresh_federation.fed.broker_config),
        listen="127.0.0.1:0",
        peer_listen="",
        database=f"sqlite:///{tmp_path / 'impatient-broker.db'}",
        city_timeout_s=1.5,
    )
    server = BrokerServer(config).start()
    yield f"127.0.0.1:{server.port}"
    server.stop(0)


def test_a_city_that_is_down_is_reported_by_name(fresh_federation: RunningFederation) -> None:
    rf = fresh_federation
    rf.nodes["borealis"].stop(0)
    with rf.partner() as client:
        answer = client.query(by_mode())
    outcomes = {c.city: (c.status, c.code) for c in answer.cities}
    assert outcomes == {
        "aurora": ("answered", "OK"),
        "borealis": ("failed", "UNAVAILABLE"),
        "cascadia": ("answered", "OK"),
    }
    assert answer.signatures_verified == 4
    assert all(c.contributing == ["aurora", "cascadia"] for c in answer.cells)
    receipted = {c["city"]: (c["status"], c["code"]) for c in answer.receipt["cities"]}
    assert receipted == outcomes


def test_a_slow_city_times_out_and_the_others_answer(
    fresh_federation: RunningFederation, impatient_broker: str, slow_city: threading.Event
) -> None:
    started = time.monotonic()
    with _client(fresh_federation, impatient_broker) as client:
        answer = client.query(by_mode(), timeout_s=10)
    elapsed = time.monotonic() - started
    outcomes = {c.city: (c.status, c.code) for c in answer.cities}
    assert outcomes == {
        "aurora": ("answered", "OK"),
        "borealis": ("answered", "OK"),
        SLOW_CITY: ("timed_out", "DEADLINE_EXCEEDED"),
    }
    assert elapsed < 5
    assert all(SLOW_CITY not in c.contributing for c in answer.cells)
    assert {c["city"]: c["status"] for c in answer.receipt["cities"]}[SLOW_CITY] == "timed_out"


def test_a_slow_city_within_a_short_partner_deadline(
    fresh_federation: RunningFederation, slow_city: threading.Event
) -> None:
    """The partner's own deadline is shorter than the broker's city timeout: the broker must still
    answer in time, with the slow city timed out, rather than let the whole call expire."""
    with fresh_federation.partner() as client:
        answer = client.query(by_mode(), timeout_s=3.0)
    outcomes = {c.city: c.status for c in answer.cities}
    assert outcomes == {"aurora": "answered", "borealis": "answered", SLOW_CITY: "timed_out"}


def test_a_query_without_a_deadline_still_times_a_slow_city_out(
    fresh_federation: RunningFederation, impatient_broker: str, slow_city: threading.Event
) -> None:
    wire = Wire(fresh_federation)
    try:
        channel = wire.channel(impatient_broker)
        response = broker_pb2_grpc.BrokerServiceStub(channel).Query(
            broker_pb2.QueryRequest(query=query_to_pb(by_mode())), metadata=wire.bearer()
        )
    finally:
        wire.close()
    statuses = {c.city_id: c.status for c in response.cities}
    assert statuses == {
        "aurora": broker_pb2.CITY_STATUS_ANSWERED,
        "borealis": broker_pb2.CITY_STATUS_ANSWERED,
        SLOW_CITY: broker_pb2.CITY_STATUS_TIMED_OUT,
    }
