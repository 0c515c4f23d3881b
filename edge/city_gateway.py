"""Ask several cities at once, each over its own mTLS channel, with one deadline for all.

GrpcCityGateway is the broker's CityGateway over gRPC: it owns the node and witness requests and
turns each failed call's status into a RemoteError.

The broker's client certificate, key and CA file are taken up without a restart: on use, at most
once every CHECK_INTERVAL_S, CityChannels stats them (edge.tls_reload.TlsWatch); when they were
replaced by files that pass the start-up checks, new calls go over new channels with the new
credentials, and the old channels are closed only after `grace_s`, so calls in flight on them end
as they would have. Files that fail the checks leave the credentials in use, with one warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from broker.gateway import CityReply, LogHead, ServedEntry, SignedResult, Targets
from citybroker.audit.v1 import audit_pb2, audit_pb2_grpc
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from domain.errors import CallFailed, RemoteError
from domain.plan import QueryPlan
from edge.log_service import entries_page_token
from edge.rpc import CHANNEL_OPTIONS, client_credentials
from edge.status import remote_error
from edge.tls_reload import TlsWatch
from edge.wire import envelope_from_pb, envelope_to_pb, plan_from_pb
from infra.config import TlsFiles
from keys import dsse

log = logging.getLogger("citybroker.rotation")

# How often, at most, a call looks at the TLS files (one stat of each) to take up replaced ones.
CHECK_INTERVAL_S = 1.0
# How long a channel replaced by new credentials stays open for the calls in flight on it.
RETIRED_GRACE_S = 60.0


@dataclass(frozen=True)
class Reply:
    """One city's raw gRPC reply to a fan_out: its response message, or its error."""

    city: str
    response: Any  # None when error is set
    error: RemoteError | None


RECONNECT_BACKOFF_MAX_MS = 2_000
_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
]


def city_channel_options(endpoint: str) -> list[tuple[str, Any]]:
    """Channel options for a city's endpoint. An endpoint listing several replicas of one city,
    `ipv4:HOST:PORT,HOST:PORT`, gets its calls round-robin over them (a list names no single
    host, so the city's TLS certificate must carry the first one). Any other endpoint keeps
    gRPC's pick-first. Either way a city that was down is tried again at least every
    RECONNECT_BACKOFF_MAX_MS: gRPC's own ceiling (two minutes) would leave a restarted city
    unanswered that long after calls failed while it was down."""
    base = [*CHANNEL_OPTIONS, *_RECONNECT]
    if not (endpoint.startswith("ipv4:") and "," in endpoint):
        return base
    first = endpoint.removeprefix("ipv4:").split(",", 1)[0]
    return [
        *base,
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.ssl_target_name_override", first.rsplit(":", 1)[0]),
    ]


class CityChannels:
    """One long-lived channel per city endpoint, created on first use, presenting the client
    certificate of `tls`; replaced TLS files are taken up for new calls (see the module's doc)."""

    def __init__(self, tls: TlsFiles, grace_s: float = RETIRED_GRACE_S) -> None:
        self._watch = TlsWatch(tls)
        self._creds = client_credentials(*tls.read())  # bad files refuse the start
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, node_pb2_grpc.QueryServiceStub]] = {}
        self._retired: list[tuple[float, grpc.Channel]] = []  # (when to close it, channel)
        self._next_check = time.monotonic() + CHECK_INTERVAL_S

    def _entry(self, endpoint: str) -> tuple[grpc.Channel, node_pb2_grpc.QueryServiceStub]:
        for old in self._take_up_replaced_files():
            old.close()
        with self._lock:
            if endpoint not in self._stubs:
                channel = grpc.secure_channel(
                    endpoint, self._creds, options=city_channel_options(endpoint)
                )
                self._stubs[endpoint] = (channel, node_pb2_grpc.QueryServiceStub(channel))
            return self._stubs[endpoint]

    def _take_up_replaced_files(self) -> list[grpc.Channel]:
        """If the check is due and the TLS files were replaced by valid ones, new credentials
        for the channels made from now on, the current ones retired; returns the retired
        channels whose grace is over, to close."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_check:
                return []
            self._next_check = now + CHECK_INTERVAL_S
            files = self._watch.replaced()
            if files is not None:
                self._creds = client_credentials(*files)
                self._retired += [(now + self._grace_s, ch) for ch, _ in self._stubs.values()]
                self._stubs.clear()
                log.info("TLS client certificate %s taken up for new calls", self._watch.tls.cert)
            due = [ch for at, ch in self._retired if at <= now]
            self._retired = [(at, ch) for at, ch in self._retired if at > now]
        return due

    def stub(self, endpoint: str) -> node_pb2_grpc.QueryServiceStub:
        """The QueryService stub of the city at `endpoint`."""
        return self._entry(endpoint)[1]

    def channel(self, endpoint: str) -> grpc.Channel:
        """The channel to `endpoint`, for other services of that city."""
        return self._entry(endpoint)[0]

    def close(self) -> None:
        """Close every channel, retired ones too; later calls open new ones."""
        with self._lock:
            channels = [ch for ch, _ in self._stubs.values()] + [ch for _, ch in self._retired]
            self._stubs.clear()
            self._retired.clear()
        for channel in channels:
            channel.close()


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
    """The broker's CityGateway and CityLogReader over gRPC, on one long-lived mTLS channel per
    city."""

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

    def log_head(self, endpoint: str, since: int, timeout_s: float) -> LogHead:
        """LogService.GetCheckpoint at `endpoint`, then GetConsistencyProof from `since` to the
        size it served, when 0 < since < that size; a failed call raises CallFailed."""
        stub = audit_pb2_grpc.LogServiceStub(self.channels.channel(endpoint))
        try:
            head = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=timeout_s)
            proof: list[bytes] = []
            if 0 < since < head.tree_size:
                request = audit_pb2.GetConsistencyProofRequest(
                    from_size=since, to_size=head.tree_size
                )
                proof = list(stub.GetConsistencyProof(request, timeout=timeout_s).hashes)
        except grpc.RpcError as e:
            raise CallFailed(remote_error(e)) from None
        return LogHead(head.checkpoint, proof)

    def log_entries(
        self, endpoint: str, start: int, count: int, timeout_s: float
    ) -> list[ServedEntry]:
        """LogService.ListEntries at `endpoint`: one page of up to `count` entries from `start`."""
        stub = audit_pb2_grpc.LogServiceStub(self.channels.channel(endpoint))
        request = audit_pb2.ListEntriesRequest(
            page_size=count, page_token=entries_page_token(start) if start else ""
        )
        try:
            entries = stub.ListEntries(request, timeout=timeout_s).entries
        except grpc.RpcError as e:
            raise CallFailed(remote_error(e)) from None
        return [ServedEntry(e.index, e.kind, b"" if e.withheld else e.entry) for e in entries]

    def inclusion_proof(
        self, endpoint: str, index: int, size: int, timeout_s: float
    ) -> list[bytes]:
        """LogService.GetInclusionProof at `endpoint`; a failed call raises CallFailed."""
        stub = audit_pb2_grpc.LogServiceStub(self.channels.channel(endpoint))
        request = audit_pb2.GetInclusionProofRequest(index=index, tree_size=size)
        try:
            return list(stub.GetInclusionProof(request, timeout=timeout_s).hashes)
        except grpc.RpcError as e:
            raise CallFailed(remote_error(e)) from None

    def close(self) -> None:
        """Close every city's channel."""
        self.channels.close()
