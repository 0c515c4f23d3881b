"""`citybroker node serve` and `broker serve` as processes: healthy over mTLS, then SIGTERM stops
them cleanly (exit 0, port closed)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli import sandbox
from tests.system.conftest import command, environment


def _wait_serving(
    address: str, creds: grpc.ChannelCredentials, proc: subprocess.Popen[str]
) -> None:
    deadline = time.monotonic() + 60
    with grpc.secure_channel(address, creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, "the server exited early"
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == (
                    health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{address} never became healthy"
            time.sleep(0.1)


def _refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("role", ["node", "broker"])
def test_serve_until_sigterm(tmp_path: Path, role: str) -> None:
    fed = sandbox.create(tmp_path / "fed")
    ca = fed.ca_cert.read_bytes()
    if role == "node":
        layout = fed.cities["aurora"]
        config, address = layout.config, layout.address
        creds = grpc.ssl_channel_credentials(
            ca, layout.operator_key.read_bytes(), layout.operator_cert.read_bytes()
        )
    else:
        config, address = fed.broker_config, fed.broker_address
        creds = grpc.ssl_channel_credentials(ca)
    out = tmp_path / "serve.out"
    with out.open("w") as log:
        proc = subprocess.Popen(
            [*command(), role, "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=environment(),
        )
        try:
            _wait_serving(address, creds, proc)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = out.read_text()
    assert "stopped" in text
    assert "Traceback" not in text
    assert _refuses(address)
