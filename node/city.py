"""A city node's own parts, with no transport: opened, checked and wired from its config, and
the consent-expiry loop started and stopped with them. The gRPC edge (edge.node_server) serves
them."""

from __future__ import annotations

import dataclasses
import logging
import threading

import sqlalchemy as sa

from audit.witness import Witness
from domain.errors import ConfigError, StoreError
from infra import storage, warehouse
from infra.party import open_party
from infra.trust_watch import RotationWatch
from keys.trust import Role
from node.agreements import AgreementRegister
from node.answering import Answerer, NodeParts, NodeSettings
from node.catalogue import data_tables
from node.config import NodeConfig
from node.consent import ConsentRegistry
from node.transparency import ExchangeRecorder

EXPIRY_INTERVAL_S = 60.0
log = logging.getLogger("citybroker.node")


def _open_data(config: NodeConfig, node: sa.Engine) -> sa.Engine:
    """The data source, checked: a missing, locked or wrongly shaped one is a start-up error."""
    tables = data_tables(config.catalogue)
    if config.data == config.database:
        storage.check_tables(node, tables)
        return node
    data = storage.open_data(config.data, tables, config.duckdb)
    if any(ds.resident_linked for ds in config.catalogue.datasets.values()):
        try:  # the consent mirror needs a temporary table there (infra.warehouse)
            warehouse.check_session_tables(data)
        except StoreError:
            data.dispose()
            raise
    return data


class City:
    """A city's key, trust store, database, Merkle log and data source, its agreement register,
    consent registry and exchange recorder, the answerer and the witness; `start` and `stop` run
    and close what is not served over gRPC."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        opened = open_party(config, config.origin)
        signer, store, self.engine, self.log = (
            opened.signer,
            opened.trust,
            opened.engine,
            opened.log,
        )
        self.trust = store
        self.rotation = RotationWatch(config, config.city, opened)  # new bundle or key, no restart
        self.data = _open_data(config, self.engine)
        self.agreements = AgreementRegister(self.engine, config.city, store, signer, self.log)
        self.consents = ConsentRegistry(
            self.engine,
            config.city,
            signer,
            known_party=lambda party_id: store.current.party(party_id) is not None,
            log=self.log,
        )
        self.exchanges = ExchangeRecorder(self.engine, self.data)
        own = store.current.party(config.city, Role.CITY)
        if own is None:
            raise ConfigError(f"city {config.city} is not a city in the trust bundle")
        self.name = own.name
        self.answerer = Answerer(
            NodeParts(
                NodeSettings(config.city, config.k_floor, config.limits, config.clock_skew_s),
                signer,
                store,
                self.agreements,
                config.catalogue,
                self.data,
                self.engine,
                self.log,
                self.exchanges,
                dataclasses.replace(config.transfers, home=own.jurisdiction),
            )
        )
        self.witness = Witness(self.engine, config.city, signer, store, self.log)
        self._expiry_stop = threading.Event()
        self._expiry = threading.Thread(
            target=self._expire_consents, name="consent-expiry", daemon=True
        )

    def brokers(self) -> list[str]:
        """The brokers in the trust bundle now."""
        return [b.id for b in self.trust.current.by_role(Role.BROKER)]

    def log_readers(self) -> list[str]:
        """Who may read the log now: the city's operators, and the federation's cities and
        brokers."""
        return [
            *self.config.operators,
            *(
                p.id
                for p in self.trust.current.parties.values()
                if p.role in (Role.CITY, Role.BROKER)
            ),
        ]

    def start(self) -> None:
        """Start the consent-expiry loop."""
        self._expiry.start()
        self.rotation.start()

    def _expire_consents(self) -> None:
        """Record `expired` events as validity runs out (queries already ignore expired consent;
        this makes the history and the log say so), each receipt logged like any other event."""
        while not self._expiry_stop.wait(EXPIRY_INTERVAL_S):
            try:
                self.consents.expire_due()  # each receipt logged by the registry
            except Exception:
                log.exception("consent expiry round failed; retrying next round")

    def stop(self) -> None:
        """Stop the expiry loop, then close the log and the databases."""
        self._expiry_stop.set()
        self.rotation.stop()
        if self._expiry.is_alive():
            self._expiry.join()
        self.log.close()
        self.engine.dispose()
        self.data.dispose()
