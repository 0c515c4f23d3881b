"""Every method a running server serves, found through its own reflection service (so a new RPC is
covered without touching the tests), and raw calls to them with bytes as the request body."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2  # noqa: F401  (registers the health descriptors)
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

# Registers every citybroker descriptor in the default pool.
from citybroker.audit.v1 import audit_pb2  # noqa: F401
from citybroker.broker.v1 import broker_pb2  # noqa: F401
from citybroker.node.v1 import node_pb2  # noqa: F401
from domain.errors import RemoteError
from edge.status import remote_error


@dataclass(frozen=True)
class Method:
    path: str  # /package.Service/Method
    request_type: type[Message]
    client_streaming: bool
    server_streaming: bool


def served_methods(channel: grpc.Channel) -> list[Method]:
    """The methods of every service the server behind `channel` lists through reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
    names = sorted(s.name for s in reply.list_services_response.service)
    pool = descriptor_pool.Default()
    methods = []
    for name in names:
        for m in pool.FindServiceByName(name).methods:
            methods.append(
                Method(
                    f"/{name}/{m.name}",
                    message_factory.GetMessageClass(m.input_type),
                    m.client_streaming,
                    m.server_streaming,
                )
            )
    return methods


def call_raw(
    channel: grpc.Channel,
    method: Method,
    body: bytes,
    metadata: list[tuple[str, str]] | None = None,
    timeout: float = 5.0,
) -> RemoteError | None:
    """Send `body` as the request's bytes; what the server refused with, or None if it answered
    (a streaming answer: its first message, or its end)."""
    md = metadata or []
    try:
        if method.client_streaming:
            requests: Iterator[bytes] = iter([body])
            if method.server_streaming:
                _first(channel.stream_stream(method.path)(requests, metadata=md, timeout=timeout))
            else:
                channel.stream_unary(method.path)(requests, metadata=md, timeout=timeout)
        elif method.server_streaming:
            _first(channel.unary_stream(method.path)(body, metadata=md, timeout=timeout))
        else:
            channel.unary_unary(method.path)(body, metadata=md, timeout=timeout)
    except grpc.RpcError as e:
        return remote_error(e)
    return None


def _first(responses: Any) -> None:
    """Read one message of a response stream (or its error), then cancel the rest: a stream such
    as health's Watch never ends by itself."""
    try:
        next(responses, None)
    finally:
        responses.cancel()
