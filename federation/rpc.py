"""The gRPC edge shared by nodes and brokers: TLS credentials, servers with health and reflection, and
one place where errors become rich statuses (google.rpc.ErrorInfo, domain "citybroker")."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from federation.errors import AuthenticationError, CitybrokerError, ConfigError

DOMAIN = "citybroker"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
log = logging.getLogger("citybroker.rpc")


def status_for(err: CitybrokerError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=err.code.value[0], message=err.message, details=[detail])
    return cast(grpc.Status, rpc_status.to_status(status))


INTERNAL_STATUS = rpc_status.to_status(
    status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
)


@dataclass(frozen=True)
class RemoteError:
    """What a failed call said: status code name, ErrorInfo reason (if any) and message."""

    code: str
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)


def remote_error(err: grpc.RpcError) -> RemoteError:
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    reason = ""
    metadata: dict[str, str] = {}
    message = err.details() if isinstance(err, grpc.Call) else str(err)
    try:
        st = rpc_status.from_call(err) if isinstance(err, grpc.Call) else None
    except ValueError:
        st = None
    if st is not None:
        for d in st.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
    return RemoteError(code.name, reason, message or "", metadata)


def peer_common_names(context: grpc.ServicerContext) -> list[str]:
    auth = context.auth_context()
    names = cast(list[bytes], auth.get("x509_common_name", []))
    return [v.decode() for v in names]


# A guard authenticates a call; what it returns is the caller, which handlers read from CALLER.
Guard = Callable[[grpc.ServicerContext, str], object]
CALLER: ContextVar[object] = ContextVar("citybroker_caller")


class EdgeInterceptor(grpc.ServerInterceptor):
    """Runs a guard (authentication) before each unary handler, and maps errors once:
    a CitybrokerError becomes its rich status, anything else INTERNAL with nothing leaked."""

    def __init__(self, guards: dict[str, Guard] | None = None) -> None:
        self._guards = guards or {}

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = details.method
        service = method.rsplit("/", 1)[0].lstrip("/")
        guard = self._guards.get(service)
        inner = handler.unary_unary

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if guard is not None:
                    CALLER.set(guard(context, method))
                return inner(request, context)
            except CitybrokerError as e:
                context.abort_with_status(status_for(e))
            except Exception:
                if getattr(context, "code", lambda: None)() is not None:  # an abort set it
                    raise
                log.exception("unexpected error in %s", method)
                context.abort_with_status(INTERNAL_STATUS)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def require_peer(allowed: Callable[[], Iterable[str]], what: str) -> Guard:
    """A guard admitting only mTLS peers whose certificate common name is in `allowed()`."""

    def guard(context: grpc.ServicerContext, method: str) -> str:
        names = peer_common_names(context)
        permitted = set(allowed())
        for n in names:
            if n in permitted:
                return n
        raise AuthenticationError(
            f"{method} is open only to {what}; the client certificate names {names or 'nobody'}",
            reason="PEER_NOT_ALLOWED",
        )

    return guard


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return self.ca_cert.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read TLS file {e.filename}: {e.strerror}") from None


def server_credentials(tls: TlsFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    """TLS with the federation CA. gRPC either requires a client certificate or never asks for
    one, so a server that serves both partners (no certificate) and federation parties listens on
    two ports: one of each."""
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca if require_client_cert else None,
        require_client_auth=require_client_cert,
    )


def add_listener(server: grpc.Server, address: str, credentials: grpc.ServerCredentials) -> int:
    """Bind `address` (HOST:PORT; port 0 picks one) and return the port; a clear ConfigError when the
    address is in use or not a local address, instead of gRPC's RuntimeError."""
    try:
        port: int = server.add_secure_port(address, credentials)
    except RuntimeError:
        raise ConfigError(
            f"cannot listen on {address}: the address is in use or not an address of this machine",
            reason="LISTEN_FAILED",
        ) from None
    return port


def client_credentials(
    ca_cert: bytes, cert: bytes | None = None, key: bytes | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca_cert, private_key=key, certificate_chain=cert
    )


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def build_server(
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    guards: dict[str, Guard] | None = None,
    max_workers: int = 64,
) -> tuple[grpc.Server, health.HealthServicer]:
    """A server with our interceptor, health checking and reflection; the caller adds ports and starts it."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[EdgeInterceptor(guards)],
        options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_workers * 4,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in service_names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return server, health_servicer
