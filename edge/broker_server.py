"""A broker process: the exchange, witnessing and servicers on one gRPC server (two listeners)."""

from __future__ import annotations

import grpc

from broker.city_logs import CityLogWatch
from broker.config import BrokerConfig
from broker.exchange import Broker
from broker.witnessing import WitnessCollector
from citybroker.audit.v1 import audit_pb2_grpc
from citybroker.broker.v1 import broker_pb2_grpc
from edge.broker_service import BROKER_SERVICE, BrokerServicer, partner_token_guard
from edge.city_gateway import RETIRED_GRACE_S, CityChannels, GrpcCityGateway
from edge.health import HealthListener
from edge.log_service import LOG_SERVICE, LogServicer
from edge.observability import broker_metrics
from edge.rpc import add_listener, build_server, require_peer, server_credentials
from infra.consumed_tokens import ConsumedTokens
from infra.party import open_party
from infra.trust_watch import RotationWatch
from keys.trust import Role


class BrokerServer:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        opened = open_party(config, config.origin)
        self.rotation = RotationWatch(config, config.broker_id, opened)  # new bundle or key
        signer, store, self.engine, self.log = (
            opened.signer,
            opened.trust,
            opened.engine,
            opened.log,
        )
        # Replaced client TLS files are taken up for new calls; the old channels stay open
        # longer than any call's deadline, so calls in flight on them are not cut.
        channels = CityChannels(config.tls, grace_s=RETIRED_GRACE_S + config.city_timeout_s)
        self.gateway = gateway = GrpcCityGateway(channels)
        self.witnessing = WitnessCollector(
            self.engine,
            self.log,
            store,
            gateway,
            config.witness_interval_s,
            cities=CityLogWatch(self.engine, self.log, store, gateway, config.broker_id, signer),
        )
        broker = Broker(
            config.broker_id,
            signer,
            store,
            gateway,
            self.log,
            config.city_timeout_s,
            after_log=self.witnessing.nudge,
        )

        def register(server: grpc.Server) -> None:
            broker_pb2_grpc.add_BrokerServiceServicer_to_server(
                BrokerServicer(broker, config.limits), server
            )
            audit_pb2_grpc.add_LogServiceServicer_to_server(LogServicer(self.log), server)

        def log_readers() -> list[str]:
            return [
                p.id for p in store.current.parties.values() if p.role in (Role.CITY, Role.BROKER)
            ]

        self.server, self.health = build_server(
            register,
            [BROKER_SERVICE, LOG_SERVICE],
            guards={
                BROKER_SERVICE: partner_token_guard(
                    config.broker_id, store, ConsumedTokens(self.engine)
                ),
                LOG_SERVICE: require_peer(log_readers, "cities and brokers of the federation"),
            },
        )
        self.port = add_listener(
            self.server, config.listen, server_credentials(config.tls, require_client_cert=False)
        )
        # Partners have no certificates, so parties that must present one come in on their own port.
        self.peer_port = (
            add_listener(
                self.server,
                config.peer_listen,
                server_credentials(config.tls, require_client_cert=True),
            )
            if config.peer_listen
            else None
        )
        self.health_listener = (
            HealthListener(config.health_listen, self.health) if config.health_listen else None
        )
        self.metrics = broker_metrics(
            config.metrics_listen, self.engine, config.origin, self.witnessing
        )

    def start(self) -> BrokerServer:
        """Start serving on both listeners and start witnessing; returns this server."""
        if self.metrics is not None:
            self.metrics.start()
        self.server.start()
        if self.health_listener is not None:
            self.health_listener.start()
        self.witnessing.start()
        self.rotation.start()
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving (calls in flight get `grace` seconds), then witnessing, and release the
        city channels, the log and the database."""
        self.health.enter_graceful_shutdown()  # probes see NOT_SERVING while calls finish
        self.server.stop(grace).wait()
        if self.health_listener is not None:
            self.health_listener.stop()
        self.rotation.stop()
        self.witnessing.stop()
        self.gateway.close()
        self.log.close()
        self.engine.dispose()
        if self.metrics is not None:
            self.metrics.stop()
