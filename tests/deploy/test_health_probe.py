"""The probes' way in: a plaintext gRPC health listener (`health_listen`) that reports what the
server's own health servicer reports, and `citybroker health`, the Dockerfile's HEALTHCHECK."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2
from typer.testing import CliRunner

from broker.config import BrokerConfig
from cli import sandbox
from cli.main import app
from edge.broker_server import BrokerServer
from edge.health import HealthListener, health_status


def test_the_listener_reports_the_servers_status_as_it_changes() -> None:
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    listener = HealthListener("127.0.0.1:0", servicer)
    listener.start()
    try:
        address = f"127.0.0.1:{listener.port}"
        assert health_status(address) == "SERVING"
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert health_status(address) == "NOT_SERVING"
        assert health_status(address, "citybroker.nope.v1.X") == "no answer: NOT_FOUND"
    finally:
        listener.stop()
    assert health_status(address, timeout_s=0.5).startswith("no answer: ")


def test_a_broker_with_health_listen_answers_citybroker_health(tmp_path: Path) -> None:
    fed = sandbox.create(tmp_path)
    config = tomllib.loads(fed.broker_config.read_text())
    sandbox.write_toml(fed.broker_config, {**config, "health_listen": "127.0.0.1:0"})
    broker = BrokerServer(BrokerConfig.load(fed.broker_config)).start()
    try:
        assert broker.health_listener is not None
        address = f"127.0.0.1:{broker.health_listener.port}"
        # Plaintext: no certificate, as kubelet's grpc probe connects.
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=5)
        result = CliRunner().invoke(app, ["health", "--address", address])
        assert result.exit_code == 0, result.output
        assert f"{address}: SERVING" in result.output
        served = CliRunner().invoke(
            app, ["health", "--address", address, "--service", "citybroker.broker.v1.BrokerService"]
        )
        assert served.exit_code == 0, served.output
    finally:
        broker.stop(0)
    result = CliRunner().invoke(app, ["health", "--address", address, "--timeout", "0.5"])
    assert result.exit_code == 1
    assert "no answer" in result.output


def test_without_health_listen_there_is_no_plaintext_port(tmp_path: Path) -> None:
    fed = sandbox.create(tmp_path)
    broker = BrokerServer(BrokerConfig.load(fed.broker_config))
    try:
        assert broker.health_listener is None
    finally:
        broker.stop(0)
