"""Ask several cities at once, each over its own mTLS channel, with one deadline for all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from citybroker.node.v1 import node_pb2_grpc
from domain.errors import RemoteError
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.status import remote_error


@dataclass(frozen=True)
class Reply:
    city: str
    response: Any  # None when error is set
    error: RemoteError | None


class CityChannels:
    """One long-lived channel per city endpoint, created on first use."""

    def __init__(self, ca_cert: bytes, cert: bytes, key: bytes) -> None:
        self._creds = client_credentials(ca_cert, cert, key)
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, node_pb2_grpc.QueryServiceStub]] = {}

    def _entry(self, endpoint: str) -> tuple[grpc.Channel, node_pb2_grpc.QueryServiceStub]:
        with self._lock:
            if endpoint not in self._stubs:
                channel = grpc.secure_channel(endpoint, self._creds, options=CHANNEL_OPTIONS)
                self._stubs[endpoint] = (channel, node_pb2_grpc.QueryServiceStub(channel))
            return self._stubs[endpoint]

    def stub(self, endpoint: str) -> node_pb2_grpc.QueryServiceStub:
        return self._entry(endpoint)[1]

    def channel(self, endpoint: str) -> grpc.Channel:
        return self._entry(endpoint)[0]

    def close(self) -> None:
        with self._lock:
            for channel, _ in self._stubs.values():
                channel.close()
            self._stubs.clear()


def fan_out(
    targets: dict[str, str],
    call: Callable[[node_pb2_grpc.QueryServiceStub], Any],
    channels: CityChannels,
) -> list[Reply]:
    """Start every city's call at once (gRPC futures), then collect; `call` sets the deadline.

    Returns one reply per city in the order given; a city that fails or times out is a reply with
    its error, never dropped.
    """
    # gRPC futures are themselves RpcErrors, so a failed start is kept apart, not told by type.
    pending: list[tuple[str, Any, grpc.RpcError | None]] = []
    for city, endpoint in targets.items():
        try:
            pending.append((city, call(channels.stub(endpoint)), None))
        except grpc.RpcError as e:
            pending.append((city, None, e))
    replies = []
    for city, fut, failed in pending:
        if failed is not None:
            replies.append(Reply(city, None, remote_error(failed)))
            continue
        try:
            replies.append(Reply(city, fut.result(), None))
        except grpc.RpcError as e:
            replies.append(Reply(city, None, remote_error(e)))
    return replies
