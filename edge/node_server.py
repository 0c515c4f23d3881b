"""A node process: the city's parts (node.city) served by one gRPC server."""

from __future__ import annotations

import grpc

from citybroker.audit.v1 import audit_pb2_grpc
from citybroker.node.v1 import node_pb2_grpc
from edge import node_service as service
from edge.health import HealthListener
from edge.log_service import LOG_SERVICE, WITNESS_SERVICE, LogServicer, WitnessServicer
from edge.observability import node_metrics
from edge.resident_privacy import ResidentPrivacy
from edge.rpc import add_listener, build_server, require_peer, server_credentials
from node.city import City
from node.config import NodeConfig
from node.log_openings import LogOpenings


class NodeServer:
    """A running node. `port` is the bound port (useful with listen port 0)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.city = city = City(config)
        self.engine, self.data, self.log = city.engine, city.data, city.log
        self.agreements, self.consents, self.exchanges = (
            city.agreements,
            city.consents,
            city.exchanges,
        )

        def register(server: grpc.Server) -> None:
            node_pb2_grpc.add_QueryServiceServicer_to_server(
                service.QueryServicer(city.answerer), server
            )
            node_pb2_grpc.add_ConsentServiceServicer_to_server(
                service.ConsentServicer(
                    city.consents,
                    city.exchanges,
                    city.name,
                    ResidentPrivacy(LogOpenings(city.engine, city.log, city.consents), city.engine),
                ),
                server,
            )
            node_pb2_grpc.add_AgreementServiceServicer_to_server(
                service.AgreementServicer(city.agreements), server
            )
            audit_pb2_grpc.add_LogServiceServicer_to_server(
                LogServicer(city.log, lambda: config.operators), server
            )
            audit_pb2_grpc.add_WitnessServiceServicer_to_server(
                WitnessServicer(city.witness), server
            )

        operators = require_peer(lambda: config.operators, f"operators of {config.city}")
        brokers = require_peer(city.brokers, "brokers in the trust bundle")
        self.server, self.health = build_server(
            register,
            [
                service.QUERY_SERVICE,
                service.CONSENT_SERVICE,
                service.AGREEMENT_SERVICE,
                LOG_SERVICE,
                WITNESS_SERVICE,
            ],
            guards={
                service.QUERY_SERVICE: brokers,
                service.CONSENT_SERVICE: operators,
                service.AGREEMENT_SERVICE: operators,
                LOG_SERVICE: require_peer(city.log_readers, "federation parties and operators"),
                WITNESS_SERVICE: brokers,
            },
        )
        self.port = add_listener(
            self.server, config.listen, server_credentials(config.tls, require_client_cert=True)
        )
        self.health_listener = (
            HealthListener(config.health_listen, self.health) if config.health_listen else None
        )
        self.metrics = node_metrics(config.metrics_listen, city.engine, config.origin)

    def start(self) -> NodeServer:
        """Serve, and start the city's consent-expiry loop."""
        if self.metrics is not None:
            self.metrics.start()
        self.server.start()
        if self.health_listener is not None:
            self.health_listener.start()
        self.city.start()
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving (in-flight calls get `grace` seconds), then stop and close the city."""
        self.health.enter_graceful_shutdown()  # probes see NOT_SERVING while calls finish
        self.server.stop(grace).wait()
        if self.health_listener is not None:
            self.health_listener.stop()
        self.city.stop()
        if self.metrics is not None:
            self.metrics.stop()
