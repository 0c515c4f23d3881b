"""Create a whole local federation in one directory: authority, CA, keys, trust bundle, configs.

Used by `citybroker demo`, the tests and the benchmarks. Private keys are written owner-only and are
generated at run time; nothing here is a real identity.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from datetime import timedelta
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

    def agreement(
        self,
        city: str,
        version: int = 1,
        k: int = 10,
        purposes: tuple[str, ...] = ("urban-mobility-planning",),
    ) -> Agreement:
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
        return {
            "broker": {"address": self.broker_address, "id": self.broker_id},
            "ca_cert": str(self.ca_cert),
            "trust_bundle": str(self.trust_bundle),
            "authority_key": str(self.authority_key),
            "partner": {"id": self.partner_id, "private_key": str(self.partner_key)},
            "cities": {c: layout.address for c, layout in self.cities.items()},
        }


def create(
    root: Path,
    cities: tuple[CityPlan, ...] = DEMO_CITIES,
    broker_id: str = "broker-1",
    partner_id: str = "northwind-mobility",
    federation: str = "citybroker-demo",
    ports: dict[str, int] | None = None,
) -> LocalFederation:
    """Write keys, certificates, the signed trust bundle and node/broker configs under `root`."""
    ports = ports or {}
    root.mkdir(parents=True, exist_ok=True)
    keys_dir, tls_dir = root / "keys", root / "tls"
    now = timefmt.now()
    window = (now - timedelta(days=1), now + timedelta(days=365))

    def grant(s: Signer) -> tuple[KeyGrant, ...]:
        return (KeyGrant(s.public, *window),)

    authority = Signer.generate()
    authority.save(keys_dir / "authority.key")
    authority_pub = root / "authority.pub"
    authority_pub.write_text(authority.public.b64 + "\n")
    ca = FederationCA.create(federation)
    ca_cert = tls_dir / "ca.crt"
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_cert.write_bytes(ca.cert_pem)

    parties: dict[str, Party] = {}
    broker_signer = Signer.generate()
    broker_signer.save(keys_dir / f"{broker_id}.key")
    broker_address = f"127.0.0.1:{ports.get(broker_id) or free_port()}"
    parties[broker_id] = Party(
        broker_id, Role.BROKER, "Demo federation broker", "EU", broker_address, grant(broker_signer)
    )
    partner_signer = Signer.generate()
    partner_key = keys_dir / f"{partner_id}.key"
    partner_signer.save(partner_key)
    parties[partner_id] = Party(
        partner_id,
        Role.PARTNER,
        "Northwind Mobility (fictional)",
        "EU-DE",
        "",
        grant(partner_signer),
        categories=("public-transport-operator",),
    )
    layouts = {}
    for plan in cities:
        signer = Signer.generate()
        signer.save(keys_dir / f"{plan.id}.key")
        address = f"127.0.0.1:{ports.get(plan.id) or free_port()}"
        parties[plan.id] = Party(
            plan.id, Role.CITY, plan.name, plan.jurisdiction, address, grant(signer)
        )
        cert, key = ca.issue(plan.id).write(tls_dir, plan.id)
        op_cert, op_key = ca.issue(f"{plan.id}.operator").write(tls_dir, f"{plan.id}.operator")
        database = root / "data" / f"{plan.id}.db"
        database.parent.mkdir(parents=True, exist_ok=True)
        data = database.with_suffix(".duckdb")
        engine = storage.create_engine(f"duckdb:///{data}")
        synthetic.create_tables(engine)  # empty until the demo or a test loads rows
        engine.dispose()
        config = root / f"node-{plan.id}.toml"
        write_toml(
            config,
            {
                "city": plan.id,
                "listen": address,
                "database": f"sqlite:///{database}",
                "signing_key": str(keys_dir / f"{plan.id}.key"),
                "operators": [f"{plan.id}.operator"],
                "k_floor": 5,
                "tls": {"ca_cert": str(ca_cert), "cert": str(cert), "key": str(key)},
                "trust": {
                    "bundle": str(root / "trust-bundle.json"),
                    "authority_key": str(authority_pub),
                },
                "datasets": {
                    "mobility": synthetic.MOBILITY_CATALOGUE,
                    "traffic": synthetic.TRAFFIC_CATALOGUE,
                    "residents": synthetic.RESIDENTS_CATALOGUE,
                },
                # Within the EU data may flow; anywhere else only under standard clauses.
                "transfers": {"EU": "allowed", "*": "instrument:scc-2021"},
            },
        )
        # What the city's data team needs to administer its node from the CLI.
        write_toml(
            root / f"operator-{plan.id}.toml",
            {
                "city": plan.id,
                "node": address,
                "ca_cert": str(ca_cert),
                "cert": str(op_cert),
                "key": str(op_key),
            },
        )
        layouts[plan.id] = CityLayout(
            plan, address, config, database, data, signer, op_cert, op_key
        )

    bundle = TrustBundle(federation, 1, now, parties)
    trust_path = root / "trust-bundle.json"
    trust_path.write_bytes(trust.sign_bundle(bundle, authority).to_json())
    cert, key = ca.issue(broker_id).write(tls_dir, broker_id)
    broker_config = root / "broker.toml"
    write_toml(
        broker_config,
        {
            "broker": broker_id,
            "listen": broker_address,
            "database": f"sqlite:///{root / 'data' / 'broker.db'}",
            "signing_key": str(keys_dir / f"{broker_id}.key"),
            "city_timeout_s": 5.0,
            "witness_interval_s": 1.0,
            "peer_listen": f"127.0.0.1:{ports.get(broker_id + '.peers') or free_port()}",
            "tls": {"ca_cert": str(ca_cert), "cert": str(cert), "key": str(key)},
            "trust": {"bundle": str(trust_path), "authority_key": str(authority_pub)},
        },
    )
    return LocalFederation(
        root=root,
        authority=authority,
        bundle=bundle,
        ca_cert=ca_cert,
        trust_bundle=trust_path,
        authority_key=authority_pub,
        broker_id=broker_id,
        broker_address=broker_address,
        broker_config=broker_config,
        broker_signer=broker_signer,
        partner_id=partner_id,
        partner_key=partner_key,
        partner_signer=partner_signer,
        cities=layouts,
    )
