"""Broker configuration and process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from audit.service import LOG_SERVICE, LogServicer
from broker.exchange import Broker
from broker.fanout import CityChannels
from broker.service import BROKER_SERVICE, BrokerServicer, partner_token_guard
from broker.witnessing import WitnessCollector
from citybroker.audit.v1 import audit_pb2_grpc
from citybroker.broker.v1 import broker_pb2_grpc
from federation.config import Section, load_toml
from federation.rpc import TlsFiles, add_listener, build_server, require_peer, server_credentials
from federation.startup import open_party
from keys.trust import Role


@dataclass(frozen=True)
class BrokerConfig:
    broker_id: str
    listen: str
    database: str
    signing_key: Path
    tls: TlsFiles
    trust_bundle: Path
    authority_key: Path
    city_timeout_s: float
    witness_interval_s: float
    # Second listener, mTLS only, for federation parties (cities, auditors' tools) reading LogService.
    peer_listen: str

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        top = Section(load_toml(path), path)
        tls, tr = top.section("tls"), top.section("trust")
        return cls(
            broker_id=top.str("broker"),
            listen=top.str("listen", "127.0.0.1:7000"),
            database=top.database_url("database"),
            signing_key=top.path_("signing_key"),
            tls=TlsFiles(tls.path_("ca_cert"), tls.path_("cert"), tls.path_("key")),
            trust_bundle=tr.path_("bundle"),
            authority_key=tr.path_("authority_key"),
            city_timeout_s=top.float("city_timeout_s", 5.0),
            witness_interval_s=top.float("witness_interval_s", 10.0),
            peer_listen=top.str("peer_listen", ""),
        )


class BrokerServer:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        opened = open_party(
            config.signing_key,
            config.authority_key,
            config.trust_bundle,
            config.database,
            f"citybroker/broker/{config.broker_id}",
        )
        signer, store, self.engine, self.log = (
            opened.signer,
            opened.trust,
            opened.engine,
            opened.log,
        )
        self.channels = CityChannels(*config.tls.read())
        self.witnessing = WitnessCollector(
            self.engine, self.log, store, self.channels, config.witness_interval_s
        )
        broker = Broker(
            config.broker_id,
            signer,
            store,
            self.channels,
            self.log,
            config.city_timeout_s,
            after_log=self.witnessing.nudge,
        )

        def register(server: grpc.Server) -> None:
            broker_pb2_grpc.add_BrokerServiceServicer_to_server(BrokerServicer(broker), server)
            audit_pb2_grpc.add_LogServiceServicer_to_server(LogServicer(self.log), server)

        def log_readers() -> list[str]:
            return [
                p.id for p in store.current.parties.values() if p.role in (Role.CITY, Role.BROKER)
            ]

        self.server, self.health = build_server(
            register,
            [BROKER_SERVICE, LOG_SERVICE],
            guards={
                BROKER_SERVICE: partner_token_guard(config.broker_id, store),
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

    def start(self) -> BrokerServer:
        self.server.start()
        self.witnessing.start()
        return self

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace).wait()
        self.witnessing.stop()
        self.channels.close()
        self.log.close()
        self.engine.dispose()
