"""A city that was down answers the broker again within seconds of coming back, however long it
was down: the broker's channel to it retries at least every RECONNECT_BACKOFF_MAX_MS rather than
after gRPC's default back-off, which grows to two minutes.

The city is down for long enough that the default back-off would have grown past the time the
test allows after the restart (waits of 1 s, 1.6 s, 2.6 s, 4.1 s, 6.6 s, 10.5 s ... with ±20 %
jitter: after 20 s down, the next try comes about 6 s after the restart). Measured: without the
ceiling the test fails; with it the city answered 1.4 s after its restart.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from citybroker.common.v1 import common_pb2
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from edge.city_gateway import RECONNECT_BACKOFF_MAX_MS, CityChannels
from edge.rpc import add_listener, server_credentials
from infra.config import TlsFiles
from keys.ca import FederationCA

DOWN_S = 20.0  # the default back-off (1 s growing by 1.6x) would then next try about 6 s after


class Answering(node_pb2_grpc.QueryServiceServicer):
    def RunQuery(
        self, request: node_pb2.RunQueryRequest, context: grpc.ServicerContext
    ) -> node_pb2.RunQueryResponse:
        return node_pb2.RunQueryResponse(log_index=1)


class City:
    """A QueryService on a fixed loopback port that can be stopped and started again."""

    def __init__(self, tmp_path: Path) -> None:
        ca = FederationCA.create("reconnect")
        self.ca = tmp_path / "ca.crt"
        self.ca.write_bytes(ca.cert_pem)
        self.tls = TlsFiles(self.ca, *ca.issue("aurora").write(tmp_path / "aurora", "aurora"))
        self.broker_tls = TlsFiles(self.ca, *ca.issue("broker-1").write(tmp_path / "b", "broker-1"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"127.0.0.1:{self.port}"
        self.server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        node_pb2_grpc.add_QueryServiceServicer_to_server(Answering(), server)
        add_listener(server, self.endpoint, server_credentials(self.tls, True))
        server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    c = City(tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _answers(channels: CityChannels, city: City) -> bool:
    request = node_pb2.RunQueryRequest(signed_query=common_pb2.Envelope(payload=b"q"))
    try:
        channels.stub(city.endpoint).RunQuery(request, timeout=1)
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return False
    return True


def test_a_restarted_city_answers_again_within_the_reconnect_ceiling(city: City) -> None:
    channels = CityChannels(city.broker_tls)
    try:
        assert _answers(channels, city)
        city.stop()
        down_until = time.monotonic() + DOWN_S
        while time.monotonic() < down_until:  # the broker keeps asking, as partners' queries do
            assert not _answers(channels, city)
            time.sleep(0.2)
        city.start()
        restarted = time.monotonic()
        allowed_s = 2 * RECONNECT_BACKOFF_MAX_MS / 1000 + 1
        while not _answers(channels, city):
            assert time.monotonic() - restarted < allowed_s, "the city was not asked again"
            time.sleep(0.1)
    finally:
        channels.close()
