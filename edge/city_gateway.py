"""Ask several cities at once, each over its own mTLS channel, with one deadline for all.

GrpcCityGateway is the broker's CityGateway over gRPC: it owns the node and witness requests and
turns each failed call's status into a RemoteError.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from broker.gateway import CityReply, SignedResult, Targets
from citybroker.audit.v1 import audit_pb2, audit_pb2_grpc
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from domain.errors import CallFailed, RemoteError
from domain.plan import QueryPlan
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.status import remote_error
from edge.wire import envelope_from_pb, envelope_to_pb, plan_from_pb
from keys import dsse


@dataclass(frozen=True)
class Reply:
    """One city's raw gRPC reply to a fan_out: its response message, or its error."""

    city: str
    response: Any  # None when error is set
    error: RemoteError | None


def city_channel_options(endpoint: str) -> list[tuple[str, Any]]:
    """Channel options for a city's endpoint. An endpoint listing several replicas of one city,
    `ipv4:HOST:PORT,HOST:PORT`, gets its calls round-robin over them (a list names no single
    host, so the city's TLS certificate must carry the first one). Any other endpoint keeps
    gRPC's pick-first, which reconnects on the next call after a node restarts rather than in
    the background with back-off."""
    if not (endpoint.startswith("ipv4:") and "," in endpoint):
        return CHANNEL_OPTIONS
    first = endpoint.removeprefix("ipv4:").split(",", 1)[0]
    return [
        *CHANNEL_OPTIONS,
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.ssl_target_name_override", first.rsplit(":", 1)[0]),
    ]


class CityChannels:
    """One long-lived channel per city endpoint, created on first use."""

    def __init__(self, ca_cert: bytes, cert: bytes, key: bytes) -> None:
        self._creds = client_credentials(ca_cert, cert, key)
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, node_pb2_grpc.QueryServiceStub]] = {}

    def _entry(self, endpoint: str) -> tuple[grpc.Channel, node_pb2_grpc.QueryServiceStub]:
        with self._lock:
            if endpoint not in self._stubs:
                channel = grpc.secure_channel(
                    endpoint, self._creds, options=city_channel_options(endpoint)
                )
                self._stubs[endpoint] = (channel, node_pb2_grpc.QueryServiceStub(channel))
            return self._stubs[endpoint]

    def stub(self, endpoint: str) -> node_pb2_grpc.QueryServiceStub:
        """The QueryService stub of the city at `endpoint`."""
        return self._entry(endpoint)[1]

    def channel(self, endpoint: str) -> grpc.Channel:
        """The channel to `endpoint`, for other services of that city."""
        return self._entry(endpoint)[0]

    def close(self) -> None:
        """Close every channel; later calls open new ones."""
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


def _replies(replies: list[Reply], value: Callable[[Any], Any]) -> list[CityReply[Any]]:
    return [
        CityReply(r.city, error=r.error)
        if r.error is not None
        else CityReply(r.city, value=value(r.response))
        for r in replies
    ]


class GrpcCityGateway:
    """The broker's CityGateway over gRPC, on one long-lived mTLS channel per city."""

    def __init__(self, channels: CityChannels) -> None:
        self.channels = channels

    def run_query(
        self, targets: Targets, signed_query: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[SignedResult]]:
        """Each city's RunQuery reply: its signed result, node log index and the salt of the
        node's commitment to it (if any), or its error."""
        request = node_pb2.RunQueryRequest(signed_query=envelope_to_pb(signed_query))
        replies = fan_out(
            dict(targets),
            lambda stub: stub.RunQuery.future(request, timeout=timeout_s),
            self.channels,
        )
        return _replies(
            replies,
            lambda r: SignedResult(envelope_from_pb(r.signed_result), r.log_index, r.result_salt),
        )

    def plan_query(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[QueryPlan]]:
        """Each city's PlanQuery reply: its plan, or its error."""
        request = node_pb2.PlanQueryRequest(signed_request=envelope_to_pb(signed_request))
        replies = fan_out(
            dict(targets),
            lambda stub: stub.PlanQuery.future(request, timeout=timeout_s),
            self.channels,
        )
        return _replies(replies, lambda r: plan_from_pb(r.plan))

    def describe_offer(
        self, targets: Targets, signed_request: dsse.Envelope, timeout_s: float
    ) -> list[CityReply[list[dsse.Envelope]]]:
        """Each city's DescribeOffer reply: its signed agreements, or its error."""
        request = node_pb2.DescribeOfferRequest(signed_request=envelope_to_pb(signed_request))
        replies = fan_out(
            dict(targets),
            lambda stub: stub.DescribeOffer.future(request, timeout=timeout_s),
            self.channels,
        )
        return _replies(replies, lambda r: [envelope_from_pb(pb) for pb in r.agreements])

    def add_checkpoint(
        self, endpoint: str, old_size: int, checkpoint: str, proof: list[bytes], timeout_s: float
    ) -> str:
        """WitnessService.AddCheckpoint at `endpoint`; a failed call raises CallFailed."""
        stub = audit_pb2_grpc.WitnessServiceStub(self.channels.channel(endpoint))
        request = audit_pb2.AddCheckpointRequest(
            old_size=old_size, checkpoint=checkpoint, proof=proof
        )
        try:
            cosignature: str = stub.AddCheckpoint(request, timeout=timeout_s).cosignature
        except grpc.RpcError as e:
            raise CallFailed(remote_error(e)) from None
        return cosignature

    def close(self) -> None:
        """Close every city's channel."""
        self.channels.close()
