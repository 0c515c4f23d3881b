"""Create a whole local federation in one directory: authority, CA, keys, trust bundle, configs.

Used by `citybroker demo`, the tests and the benchmarks. Private keys are written owner-only and are
generated at run time; nothing here is a real identity.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from domain.agreement import Agreement, Appearance, FieldTerms
from infra import storage
from keys import timefmt, trust
from keys.ca import FederationCA
from keys.ed25519 import Signer
from keys.trust import KeyGrant, Party, Role, TrustBundle
from node import synthetic


def free_port() -> int:
    """A loopback port that is free now, from below the kernel's ephemeral range: the address
    is written into the signed trust bundle before the server binds it, and a port from the
    ephemeral range can meanwhile be taken by any outgoing connection on the machine."""
    low, high = _ephemeral_range()
    top = low - 1 if low > 10_000 else 65_535
    bottom = 10_000 if low > 10_000 else high + 1
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(bottom, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything tried is busy: let the kernel choose
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` as TOML, replacing any file there."""
    path.write_text(tomli_w.dumps(data))


@dataclass(frozen=True)
class CityPlan:
    id: str
    name: str
    jurisdiction: str
    districts: tuple[str, ...]


DEMO_CITIES = (
    CityPlan("aurora", "Aurora", "EU-FI", ("Harbour", "Old Town", "Northgate", "Riverside")),
    CityPlan("borealis", "Borealis", "EU-SE", ("Central", "Hillside", "Docklands")),
    CityPlan("cascadia", "Cascadia", "EU-EE", ("Market", "Lakeside", "University", "Airport")),
)


@dataclass
class CityLayout:
    plan: CityPlan
    address: str
    config: Path
    database: Path
    # The city's datasets: a DuckDB file beside the node database, the node's default data source.
    data: Path
    signer: Signer
    operator_cert: Path
    operator_key: Path


@dataclass
class LocalFederation:
    root: Path
    authority: Signer
    bundle: TrustBundle
    ca_cert: Path
    trust_bundle: Path
    authority_key: Path
    broker_id: str
    broker_address: str
    broker_config: Path
    broker_signer: Signer
    partner_id: str
    partner_key: Path
    partner_signer: Signer
    cities: dict[str, CityLayout] = field(default_factory=dict)
    # The CA, in memory only: what issues replacement certificates (rotation tests).
    ca: FederationCA | None = None

    def agreement(
        self,
        city: str,
        version: int = 1,
        k: int = 10,
        purposes: tuple[str, ...] = ("urban-mobility-planning",),
    ) -> Agreement:
        """Unsigned terms from `city` to the partner for the demo's traffic and mobility datasets,
        valid from a minute ago until a year from now."""
        now = timefmt.now()
        return Agreement(
            agreement_id=f"{city}--{self.partner_id}",
            version=version,
            provider=city,
            consumer=self.partner_id,
            purposes=frozenset(purposes),
            datasets={
                "traffic": {
                    "district": FieldTerms(Appearance.RAW),
                    "observed_on": FieldTerms(Appearance.GENERALISED, frozenset({"week", "month"})),
                    "vehicles": FieldTerms(Appearance.AGGREGATE_ONLY),
                    "cyclists": FieldTerms(Appearance.AGGREGATE_ONLY),
                },
                "mobility": {
                    "district": FieldTerms(Appearance.RAW),
                    "mode": FieldTerms(Appearance.RAW),
                    "trip_date": FieldTerms(Appearance.GENERALISED, frozenset({"month", "year"})),
                    "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
                },
            },
            min_cell_size=k,
            valid_from=now - timedelta(minutes=1),
            valid_until=now + timedelta(days=365),
            retention_days=90,
        )

    def demo_json(self) -> dict[str, Any]:
        """The connection details `citybroker demo --serve` writes to demo.json (`query --demo`)."""
        return {
            "broker": {"address": self.broker_address, "id": self.broker_id},
            "ca_cert": str(self.ca_cert),
            "trust_bundle": str(self.trust_bundle),
            "authority_key": str(self.authority_key),
            "partner": {"id": self.partner_id, "private_key": str(self.partner_key)},
            "cities": {c: layout.address for c, layout in self.cities.items()},
        }


@dataclass(frozen=True)
class _Issuer:
    """What every party's files are made with: the directory, the authority, the CA, the window
    the trust bundle grants keys for, and any fixed ports."""

    root: Path
    authority: Signer
    authority_pub: Path
    ca: FederationCA
    ca_cert: Path
    window: tuple[datetime, datetime]
    ports: dict[str, int]
    # A party's host (IP address or name) when not loopback: its address and certificate SAN.
    hosts: dict[str, str]

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def trust_path(self) -> Path:
        return self.root / "trust-bundle.json"

    @classmethod
    def create(
        cls,
        root: Path,
        federation: str,
        ports: dict[str, int],
        now: datetime,
        hosts: dict[str, str] | None = None,
    ) -> _Issuer:
        """A new authority (public key in root/authority.pub) and CA (root/tls/ca.crt)."""
        authority = Signer.generate()
        authority.save(root / "keys" / "authority.key")
        authority_pub = root / "authority.pub"
        authority_pub.write_text(authority.public.b64 + "\n")
        ca = FederationCA.create(federation)
        ca_cert = root / "tls" / "ca.crt"
        ca_cert.parent.mkdir(parents=True, exist_ok=True)
        ca_cert.write_bytes(ca.cert_pem)
        window = (now - timedelta(days=1), now + timedelta(days=365))
        return cls(root, authority, authority_pub, ca, ca_cert, window, ports, hosts or {})

    def signer(self, party: str) -> Signer:
        """A new signing key for `party`, saved as keys/PARTY.key."""
        signer = Signer.generate()
        signer.save(self.keys_dir / f"{party}.key")
        return signer

    def grant(self, signer: Signer) -> tuple[KeyGrant, ...]:
        return (KeyGrant(signer.public, *self.window),)

    def address(self, name: str) -> str:
        host = self.hosts.get(name, "127.0.0.1")
        return f"{host}:{self.ports.get(name) or free_port()}"

    def tls(self, name: str) -> dict[str, str]:
        """A config's [tls] table, with a new certificate for `name` (its host among the SANs)."""
        sans = ("localhost", "127.0.0.1", *([self.hosts[name]] if name in self.hosts else []))
        cert, key = self.ca.issue(name, sans).write(self.root / "tls", name)
        return {"ca_cert": str(self.ca_cert), "cert": str(cert), "key": str(key)}

    def trust(self) -> dict[str, str]:
        """A config's [trust] table."""
        return {"bundle": str(self.trust_path), "authority_key": str(self.authority_pub)}


def _city(issuer: _Issuer, plan: CityPlan) -> tuple[Party, CityLayout]:
    """A city's key, certificates, empty data file, node config and operator connection file."""
    root = issuer.root
    signer = issuer.signer(plan.id)
    address = issuer.address(plan.id)
    party = Party(plan.id, Role.CITY, plan.name, plan.jurisdiction, address, issuer.grant(signer))
    operator = issuer.tls(f"{plan.id}.operator")
    database = root / "data" / f"{plan.id}.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    data = database.with_suffix(".duckdb")
    engine = storage.create_engine(f"duckdb:///{data}")
    synthetic.create_tables(engine)  # empty until the demo or a test loads rows
    engine.dispose()
    config = root / f"node-{plan.id}.toml"
    node = {
        "city": plan.id,
        "listen": address,
        "database": f"sqlite:///{database}",
        "signing_key": str(issuer.keys_dir / f"{plan.id}.key"),
        "operators": [f"{plan.id}.operator"],
        "k_floor": 5,
        "tls": issuer.tls(plan.id),
        "trust": issuer.trust(),
        "datasets": {
            "mobility": synthetic.MOBILITY_CATALOGUE,
            "traffic": synthetic.TRAFFIC_CATALOGUE,
            "residents": synthetic.RESIDENTS_CATALOGUE,
        },
        # Within the EU data may flow; anywhere else only under standard clauses.
        "transfers": {"EU": "allowed", "*": "instrument:scc-2021"},
    }
    write_toml(config, node)
    # What the city's data team needs to administer its node from the CLI.
    write_toml(root / f"operator-{plan.id}.toml", {"city": plan.id, "node": address, **operator})
    layout = CityLayout(
        plan, address, config, database, data, signer, Path(operator["cert"]), Path(operator["key"])
    )
    return party, layout


def _broker_config(issuer: _Issuer, broker_id: str, address: str) -> Path:
    """The broker's config, with a new certificate; its path."""
    config = issuer.root / "broker.toml"
    write_toml(
        config,
        {
            "broker": broker_id,
            "listen": address,
            "database": f"sqlite:///{issuer.root / 'data' / 'broker.db'}",
            "signing_key": str(issuer.keys_dir / f"{broker_id}.key"),
            "city_timeout_s": 5.0,
            "witness_interval_s": 1.0,
            "peer_listen": issuer.address(broker_id + ".peers"),
            "tls": issuer.tls(broker_id),
            "trust": issuer.trust(),
        },
    )
    return config


def create(
    root: Path,
    cities: tuple[CityPlan, ...] = DEMO_CITIES,
    broker_id: str = "broker-1",
    partner_id: str = "northwind-mobility",
    federation: str = "citybroker-demo",
    ports: dict[str, int] | None = None,
    hosts: dict[str, str] | None = None,
) -> LocalFederation:
    """Write keys, certificates, the signed trust bundle and node/broker configs under `root`.
    `hosts` puts a party (city or broker id; the broker's peer port is "BROKER.peers") on an
    address other than loopback, such as a network namespace's; the others stay on 127.0.0.1."""
    root.mkdir(parents=True, exist_ok=True)
    now = timefmt.now()
    issuer = _Issuer.create(root, federation, ports or {}, now, hosts)
    broker_signer = issuer.signer(broker_id)
    broker_address = issuer.address(broker_id)
    partner_signer = issuer.signer(partner_id)
    parties = {
        broker_id: Party(
            broker_id,
            Role.BROKER,
            "Demo federation broker",
            "EU",
            broker_address,
            issuer.grant(broker_signer),
        ),
        partner_id: Party(
            partner_id,
            Role.PARTNER,
            "Northwind Mobility (fictional)",
            "EU-DE",
            "",
            issuer.grant(partner_signer),
            categories=("public-transport-operator",),
        ),
    }
    layouts = {}
    for plan in cities:
        parties[plan.id], layouts[plan.id] = _city(issuer, plan)
    bundle = TrustBundle(federation, 1, now, parties)
    issuer.trust_path.write_bytes(trust.sign_bundle(bundle, issuer.authority).to_json())
    return LocalFederation(
        root=root,
        authority=issuer.authority,
        bundle=bundle,
        ca_cert=issuer.ca_cert,
        trust_bundle=issuer.trust_path,
        authority_key=issuer.authority_pub,
        broker_id=broker_id,
        broker_address=broker_address,
        broker_config=_broker_config(issuer, broker_id, broker_address),
        broker_signer=broker_signer,
        partner_id=partner_id,
        partner_key=issuer.keys_dir / f"{partner_id}.key",
        partner_signer=partner_signer,
        cities=layouts,
        ca=issuer.ca,
    )
