"""The broker's client certificate towards the cities is rotated without a restart: replaced TLS
files are presented from the next call on, calls in flight on the old channels finish, and files
that fail the start-up checks leave the certificate in use, with one warning.

A recording QueryService (mTLS, requiring a client certificate from the CA) shows which
certificate each call presented; the last test moves a running federation to a new CA, which the
restarted nodes alone trust, and the broker answers from its new certificate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from citybroker.broker.v1 import broker_pb2
from citybroker.common.v1 import common_pb2
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from edge import city_gateway
from edge.city_gateway import CityChannels
from edge.node_server import NodeServer
from edge.rpc import add_listener, server_credentials
from infra import trust_watch
from infra.config import TlsFiles
from keys.ca import FederationCA, IssuedCert
from node.config import NodeConfig
from tests.conftest import RunningFederation, start_federation, stop_federation
from tests.integration.conftest import Wire

BROKER = "broker-1"
HOLD = b"hold"  # a RunQuery with this payload waits until the test releases it


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _replace(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` by rename, as an operator would."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _install(issued: IssuedCert, tls: TlsFiles, key_mode: int = 0o600) -> None:
    _replace(tls.key, issued.key_pem, key_mode)
    _replace(tls.cert, issued.cert_pem)


class RecordingQueries(node_pb2_grpc.QueryServiceServicer):
    """Records the client certificate (DER) each RunQuery presented; HOLD calls wait."""

    def __init__(self) -> None:
        self.presented: list[bytes] = []
        self.held = threading.Event()
        self.release = threading.Event()

    def RunQuery(
        self, request: node_pb2.RunQueryRequest, context: grpc.ServicerContext
    ) -> node_pb2.RunQueryResponse:
        (pem,) = cast(list[bytes], context.auth_context()["x509_pem_cert"])
        self.presented.append(_der(pem))
        if request.signed_query.payload == HOLD:
            self.held.set()
            self.release.wait(30)
        return node_pb2.RunQueryResponse(log_index=len(self.presented))


@dataclass
class City:
    ca: FederationCA
    endpoint: str
    queries: RecordingQueries
    broker_tls: TlsFiles  # the broker's files, which the tests replace


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[City]:
    monkeypatch.setattr(city_gateway, "CHECK_INTERVAL_S", 0.0)  # look at every call
    ca = FederationCA.create("rotation")
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    cert, key = ca.issue("aurora").write(tmp_path / "aurora", "aurora")
    broker_cert, broker_key = ca.issue(BROKER).write(tmp_path / "broker", BROKER)
    queries = RecordingQueries()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    node_pb2_grpc.add_QueryServiceServicer_to_server(queries, server)
    port = add_listener(
        server, "127.0.0.1:0", server_credentials(TlsFiles(ca_path, cert, key), True)
    )
    server.start()
    try:
        yield City(ca, f"127.0.0.1:{port}", queries, TlsFiles(ca_path, broker_cert, broker_key))
    finally:
        queries.release.set()
        server.stop(0).wait()


def _ask(channels: CityChannels, city: City, payload: bytes = b"q") -> bytes:
    """Call RunQuery; the certificate the call presented."""
    request = node_pb2.RunQueryRequest(signed_query=common_pb2.Envelope(payload=payload))
    channels.stub(city.endpoint).RunQuery(request, timeout=10)
    return city.queries.presented[-1]


def test_a_replaced_client_certificate_is_presented_from_the_next_call(city: City) -> None:
    first = _der(city.broker_tls.cert.read_bytes())
    channels = CityChannels(city.broker_tls)
    try:
        assert _ask(channels, city) == first
        request = node_pb2.RunQueryRequest(signed_query=common_pb2.Envelope(payload=HOLD))
        in_flight = channels.stub(city.endpoint).RunQuery.future(request, timeout=30)
        assert city.queries.held.wait(10)

        second = city.ca.issue(BROKER)
        _install(second, city.broker_tls)
        assert _ask(channels, city) == _der(second.cert_pem) != first

        # The call in flight on the old channel is not cut: it finishes when the city answers.
        assert not in_flight.done()
        city.queries.release.set()
        in_flight.result(10)
        assert city.queries.presented[1] == first
    finally:
        channels.close()


@pytest.mark.parametrize(
    "bad, why",
    [
        ("expired", "expired"),
        ("other key", "does not hold the private key"),
        ("key readable by others", "group or others"),
    ],
)
def test_invalid_replacement_files_keep_the_certificate_in_use_with_one_warning(
    city: City, caplog: pytest.LogCaptureFixture, bad: str, why: str
) -> None:
    first = _der(city.broker_tls.cert.read_bytes())
    channels = CityChannels(city.broker_tls)
    try:
        assert _ask(channels, city) == first
        fresh = city.ca.issue(BROKER)
        with caplog.at_level(logging.WARNING, logger="citybroker.rotation"):
            if bad == "expired":
                _install(city.ca.issue(BROKER, days=0), city.broker_tls)
            elif bad == "other key":
                _install(IssuedCert(fresh.cert_pem, city.ca.issue(BROKER).key_pem), city.broker_tls)
            else:
                _install(fresh, city.broker_tls, key_mode=0o644)
            for _ in range(3):
                assert _ask(channels, city) == first
        warnings = [r.getMessage() for r in caplog.records if r.name == "citybroker.rotation"]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("TLS files changed but not taken up:") and why in warnings[0]

        _install(fresh, city.broker_tls)  # then valid files are taken up
        assert _ask(channels, city) == _der(fresh.cert_pem)
    finally:
        channels.close()


def test_the_files_are_looked_at_at_most_once_a_check_interval(
    city: City, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(city_gateway, "CHECK_INTERVAL_S", 0.5)
    first = _der(city.broker_tls.cert.read_bytes())
    channels = CityChannels(city.broker_tls)
    try:
        second = city.ca.issue(BROKER)
        _install(second, city.broker_tls)
        assert _ask(channels, city) == first  # within the interval: not looked at yet
        time.sleep(0.6)
        assert _ask(channels, city) == _der(second.cert_pem)
    finally:
        channels.close()


def test_replaced_channels_are_closed_once_their_grace_is_over(city: City) -> None:
    channels = CityChannels(city.broker_tls, grace_s=0.3)
    try:
        _ask(channels, city)
        old = channels.channel(city.endpoint)
        _install(city.ca.issue(BROKER), city.broker_tls)
        _ask(channels, city)  # retires `old`, still open for its calls in flight
        assert channels.channel(city.endpoint) is not old
        old_stub = node_pb2_grpc.QueryServiceStub(old)
        old_stub.RunQuery(node_pb2.RunQueryRequest(), timeout=10)
        time.sleep(0.4)
        _ask(channels, city)  # the grace is over: closed
        with pytest.raises(ValueError, match="closed channel"):
            old_stub.RunQuery(node_pb2.RunQueryRequest(), timeout=10)
    finally:
        channels.close()


# -- a running federation moves to a new CA -----------------------------------------------------


@pytest.fixture
def rf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningFederation]:
    monkeypatch.setattr(city_gateway, "CHECK_INTERVAL_S", 0.0)
    monkeypatch.setattr(trust_watch, "POLL_INTERVAL_S", 0.2)
    running = start_federation(tmp_path / "federation", residents_per_city=60)
    yield running
    stop_federation(running)


def _answered_by_all(rf: RunningFederation, within_s: float = 0.0) -> None:
    """Every city answers a query through the broker, at once or, with `within_s`, within that
    time (a channel that met a city while it was down waits out gRPC's reconnect back-off)."""
    deadline = time.monotonic() + within_s
    wire = Wire(rf)  # reads the CA file now
    try:
        while True:
            response = wire.query()
            statuses = {c.city_id: (c.status, c.reason, c.message) for c in response.cities}
            answered = [s == broker_pb2.CITY_STATUS_ANSWERED for s, _, _ in statuses.values()]
            if all(answered) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        wire.close()
    assert set(statuses) == set(rf.fed.cities), statuses
    assert all(answered), statuses


def test_the_broker_follows_its_federation_to_a_new_ca_without_a_restart(
    rf: RunningFederation,
) -> None:
    fed = rf.fed
    _answered_by_all(rf)  # the broker's channels to every city are open
    new_ca = FederationCA.create("moved")
    tls = fed.root / "tls"
    for party in [*fed.cities, fed.broker_id]:
        issued = new_ca.issue(party)
        _replace(tls / f"{party}.key", issued.key_pem)
        _replace(tls / f"{party}.crt", issued.cert_pem)
    _replace(fed.ca_cert, new_ca.cert_pem)  # every party now trusts the new CA only
    # Restarted, the nodes have no connection from before the move: the broker must connect
    # anew, with a certificate of the new CA, and trust the nodes' new certificates.
    for city, layout in fed.cities.items():
        rf.nodes[city].stop(0)
        rf.nodes[city] = NodeServer(NodeConfig.load(layout.config)).start()
    _answered_by_all(rf, within_s=30.0)
