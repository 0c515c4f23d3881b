"""Waiting for a server to report SERVING through gRPC health checking (as `grpcurl` or a probe would)."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from domain.errors import ConfigError


def wait_serving(
    address: str,
    creds: grpc.ChannelCredentials,
    still_running: Callable[[], None],
    timeout_s: float = 60.0,
) -> None:
    """Return once `address` reports SERVING; `still_running` raises if the process behind it died,
    and a ConfigError says so when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    with grpc.secure_channel(address, creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            still_running()
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ConfigError(f"{address} did not become healthy in {timeout_s:.0f}s")
            time.sleep(0.1)
