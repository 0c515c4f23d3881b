"""gRPC health checking: waiting for a server to report SERVING (as `grpcurl` or a probe would), the
plaintext health-only listener for probes, and one check as `citybroker health` makes it."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from domain.errors import ConfigError
from edge.decoding import DecodingInterceptor


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


class HealthListener:
    """gRPC health alone, in plaintext, on its own address: for probes that cannot present the
    federation's client certificate (kubelet's `grpc` probe speaks no TLS; Docker's HEALTHCHECK
    runs `citybroker health`). It answers from the server's own HealthServicer, so it reports
    what the main listeners report, and serves nothing else."""

    def __init__(self, address: str, servicer: health.HealthServicer) -> None:
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2), interceptors=[DecodingInterceptor()]
        )
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        try:
            self.port: int = self.server.add_insecure_port(address)
        except RuntimeError:
            raise ConfigError(
                f"cannot listen on {address} (health_listen): the address is in use or not an "
                "address of this machine",
                reason="LISTEN_FAILED",
            ) from None

    def start(self) -> None:
        """Start answering health checks."""
        self.server.start()

    def stop(self) -> None:
        """Stop at once: a probe in flight is simply retried by its prober."""
        self.server.stop(0).wait()


def health_status(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """What a plaintext health listener at `address` reports for `service` ("" is the whole
    server): SERVING, NOT_SERVING, ..., or why it gave no answer (such as "no answer: UNAVAILABLE")."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            return f"no answer: {code.name if code is not None else 'UNKNOWN'}"
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name
