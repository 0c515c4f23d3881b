"""The gRPC plumbing shared by nodes and brokers: TLS credentials, servers with health and reflection,
and the interceptor that authenticates each call and maps its errors once (through edge.status)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from contextvars import ContextVar
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from domain.errors import AuthenticationError, CitybrokerError, ConfigError
from edge.decoding import DecodingInterceptor
from edge.status import INTERNAL_STATUS, status_for
from edge.tls_reload import ReloadingCredentials
from infra.config import TlsFiles
from infra.store_errors import store_error

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
log = logging.getLogger("citybroker.rpc")


def peer_common_names(context: grpc.ServicerContext) -> list[str]:
    """The common names of the caller's verified client certificate; empty without one."""
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
        """The method's handler wrapped to run the service's guard first and map its errors;
        streaming handlers, and unknown methods (None), pass through unchanged."""
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
            except Exception as e:
                if getattr(context, "code", lambda: None)() is not None:  # an abort set it
                    raise
                # A store that is down or full is a condition, not a bug: UNAVAILABLE, reason.
                if (store := store_error(e)) is not None:
                    log.warning("store failure in %s: %s", method, store.message)
                    context.abort_with_status(status_for(store))
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


def server_credentials(tls: TlsFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    """TLS with the federation CA. gRPC either requires a client certificate or never asks for
    one, so a server that serves both partners (no certificate) and federation parties listens on
    two ports: one of each. Replaced certificate files are taken up without a restart."""
    return ReloadingCredentials(tls, require_client_cert).credentials()


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


# What client_credentials returns, named here so callers above the edge need not import grpc.
ChannelCredentials = grpc.ChannelCredentials


def client_credentials(
    ca_cert: bytes, cert: bytes | None = None, key: bytes | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials trusting `ca_cert`, presenting `cert` and `key` as the client
    certificate when given (mTLS)."""
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
    from edge.metrics_interceptor import MetricsInterceptor  # servers only: clients skip metrics

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        # MetricsInterceptor, outermost, counts, times and logs every call, refusals included;
        # then an undecodable request is refused before anything else runs.
        interceptors=[MetricsInterceptor(), DecodingInterceptor(), EdgeInterceptor(guards)],
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
