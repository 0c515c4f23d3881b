"""A node process: wire the stores, the answerer and the servicers into one gRPC server."""

from __future__ import annotations

import dataclasses
import logging
import threading

import grpc

from audit.witness import Witness
from citybroker.audit.v1 import audit_pb2_grpc
from citybroker.node.v1 import node_pb2_grpc
from domain.errors import ConfigError
from domain.kinds import LogKind
from edge import node_service as service
from edge.log_service import LOG_SERVICE, WITNESS_SERVICE, LogServicer, WitnessServicer
from edge.rpc import add_listener, build_server, require_peer, server_credentials
from infra import storage
from infra.party import open_party
from keys.trust import Role
from node.agreements import AgreementRegister
from node.answering import Answerer, NodeSettings
from node.catalogue import data_tables
from node.config import NodeConfig
from node.consent import ConsentRegistry
from node.transparency import ExchangeRecorder

EXPIRY_INTERVAL_S = 60.0
log = logging.getLogger("citybroker.node")


class NodeServer:
    """A running node. `port` is the bound port (useful with listen port 0)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        opened = open_party(config, config.origin)
        signer, store, self.engine, self.log = (
            opened.signer,
            opened.trust,
            opened.engine,
            opened.log,
        )
        bundle = store.current
        # Checked before serving: a missing, locked or wrongly shaped data source is a start-up error.
        tables = data_tables(config.catalogue)
        if config.data == config.database:
            data = self.engine
            storage.check_tables(data, tables)
        else:
            data = storage.open_data(config.data, tables, config.duckdb)
        self.data = data
        self.agreements = AgreementRegister(self.engine, config.city, store, signer, self.log)
        self.consents = ConsentRegistry(
            self.engine,
            config.city,
            signer,
            known_party=lambda party_id: store.current.party(party_id) is not None,
        )
        self.exchanges = ExchangeRecorder(self.engine, data)
        own = bundle.party(config.city, Role.CITY)
        if own is None:
            raise ConfigError(f"city {config.city} is not a city in the trust bundle")
        city_name = own.name
        transfers = dataclasses.replace(config.transfers, home=own.jurisdiction)
        self._expiry_stop = threading.Event()
        self._expiry = threading.Thread(
            target=self._expire_consents, name="consent-expiry", daemon=True
        )
        answerer = Answerer(
            NodeSettings(config.city, config.k_floor),
            signer,
            store,
            self.agreements,
            config.catalogue,
            data,
            self.log,
            self.exchanges,
            transfers,
            self.engine,
        )

        def brokers() -> list[str]:
            return [b.id for b in store.current.by_role(Role.BROKER)]

        def log_readers() -> list[str]:
            return [
                *config.operators,
                *(
                    p.id
                    for p in store.current.parties.values()
                    if p.role in (Role.CITY, Role.BROKER)
                ),
            ]

        witness = Witness(self.engine, config.city, signer, store, self.log)

        def register(server: grpc.Server) -> None:
            node_pb2_grpc.add_QueryServiceServicer_to_server(
                service.QueryServicer(answerer), server
            )
            node_pb2_grpc.add_ConsentServiceServicer_to_server(
                service.ConsentServicer(self.consents, self.log, self.exchanges, city_name), server
            )
            node_pb2_grpc.add_AgreementServiceServicer_to_server(
                service.AgreementServicer(self.agreements), server
            )
            audit_pb2_grpc.add_LogServiceServicer_to_server(LogServicer(self.log), server)
            audit_pb2_grpc.add_WitnessServiceServicer_to_server(WitnessServicer(witness), server)

        operators = require_peer(lambda: config.operators, f"operators of {config.city}")
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
                service.QUERY_SERVICE: require_peer(brokers, "brokers in the trust bundle"),
                service.CONSENT_SERVICE: operators,
                service.AGREEMENT_SERVICE: operators,
                LOG_SERVICE: require_peer(log_readers, "federation parties and operators"),
                WITNESS_SERVICE: require_peer(brokers, "brokers in the trust bundle"),
            },
        )
        self.port = add_listener(
            self.server, config.listen, server_credentials(config.tls, require_client_cert=True)
        )

    def start(self) -> NodeServer:
        self.server.start()
        self._expiry.start()
        return self

    def _expire_consents(self) -> None:
        """Record `expired` events as validity runs out (queries already ignore expired consent;
        this makes the history and the log say so), each receipt logged like any other event."""
        while not self._expiry_stop.wait(EXPIRY_INTERVAL_S):
            try:
                for receipt in self.consents.expire_due():
                    self.log.append(receipt, kind=LogKind.CONSENT)
            except Exception:
                log.exception("consent expiry round failed; retrying next round")

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace).wait()
        self._expiry_stop.set()
        if self._expiry.is_alive():
            self._expiry.join()
        self.log.close()
        self.engine.dispose()
        self.data.dispose()
