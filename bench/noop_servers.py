"""The baseline topology: a node and a broker whose handlers do no work (bare gRPC fan-out).

    python bench/noop_servers.py node --config node-aurora.toml
    python bench/noop_servers.py broker --config broker.toml

They read the same config files as the real `citybroker node serve` / `broker serve`, listen on the
same addresses with the same mTLS server credentials, and are built by the same
`edge.rpc.build_server` (same thread pool, interceptor, health and reflection). The no-op node
answers RunQuery with an empty RunQueryResponse; the no-op broker fans each Query out to every city
of the trust bundle with the same `edge.city_gateway.CityChannels` / `fan_out` over mTLS, waits for all
of them, and answers with an empty QueryResponse. No token check, no signature, no SQL, no log.
A city that fails makes the no-op broker fail the call, so a broken baseline cannot look fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import grpc

from broker.config import BrokerConfig
from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from citybroker.node.v1 import node_pb2, node_pb2_grpc
from edge.city_gateway import CityChannels, fan_out
from edge.rpc import build_server, server_credentials
from keys import trust
from keys.trust import Role
from node.config import NodeConfig

QUERY_SERVICE = node_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
BROKER_SERVICE = broker_pb2.DESCRIPTOR.services_by_name["BrokerService"].full_name


class NoopQueryServicer(node_pb2_grpc.QueryServiceServicer):
    def RunQuery(
        self, request: node_pb2.RunQueryRequest, context: grpc.ServicerContext
    ) -> node_pb2.RunQueryResponse:
        return node_pb2.RunQueryResponse()


class NoopBrokerServicer(broker_pb2_grpc.BrokerServiceServicer):
    def __init__(self, targets: dict[str, str], channels: CityChannels, timeout_s: float) -> None:
        self._targets, self._channels, self._timeout = targets, channels, timeout_s
        self._request = node_pb2.RunQueryRequest()

    def Query(
        self, request: broker_pb2.QueryRequest, context: grpc.ServicerContext
    ) -> broker_pb2.QueryResponse:
        replies = fan_out(
            self._targets,
            lambda stub: stub.RunQuery.future(self._request, timeout=self._timeout),
            self._channels,
        )
        failed = [r for r in replies if r.error is not None]
        if failed:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{len(failed)} no-op cities failed: {failed[0].error}",
            )
        return broker_pb2.QueryResponse()


def serve_until_signalled(server: grpc.Server, what: str) -> None:
    done = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"{what}; SIGTERM or Ctrl-C stops it", file=sys.stderr, flush=True)
    done.wait()
    server.stop(1).wait()
    print("stopped", file=sys.stderr, flush=True)


def run_node(config_path: Path) -> None:
    config = NodeConfig.load(config_path)

    def register(server: grpc.Server) -> None:
        node_pb2_grpc.add_QueryServiceServicer_to_server(NoopQueryServicer(), server)

    server, _ = build_server(register, [QUERY_SERVICE])
    port = server.add_secure_port(
        config.listen, server_credentials(config.tls, require_client_cert=True)
    )
    serve_until_signalled(server, f"no-op node {config.city} serving on port {port}")


def run_broker(config_path: Path) -> None:
    config = BrokerConfig.load(config_path)
    bundle = trust.load_bundle(config.trust_bundle, trust.load_authority_key(config.authority_key))
    targets = {c.id: c.endpoint for c in bundle.by_role(Role.CITY)}
    channels = CityChannels(config.tls)

    def register(server: grpc.Server) -> None:
        broker_pb2_grpc.add_BrokerServiceServicer_to_server(
            NoopBrokerServicer(targets, channels, config.city_timeout_s), server
        )

    server, _ = build_server(register, [BROKER_SERVICE])
    port = server.add_secure_port(
        config.listen, server_credentials(config.tls, require_client_cert=False)
    )
    try:
        serve_until_signalled(server, f"no-op broker {config.broker_id} serving on port {port}")
    finally:
        channels.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("node", "broker"))
    parser.add_argument("--config", type=Path, required=True, help="the real server's TOML config")
    args = parser.parse_args(argv)
    if args.role == "node":
        run_node(args.config)
    else:
        run_broker(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
