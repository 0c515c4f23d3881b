"""A sandbox federation's files: configs the node and broker accept, a trust bundle the authority
signed naming every party at its address, and operator connection files for the CLI."""

from __future__ import annotations

from pathlib import Path

from broker.config import BrokerConfig
from cli import sandbox
from infra.config import Section, load_toml
from keys.trust import Role, load_authority_key, load_bundle
from node.config import NodeConfig


def test_create_writes_a_usable_federation(tmp_path: Path) -> None:
    fed = sandbox.create(tmp_path / "fed", ports={"broker-1": 17001})
    assert fed.broker_address == "127.0.0.1:17001"
    bundle = load_bundle(fed.trust_bundle, load_authority_key(fed.authority_key))
    assert bundle == fed.bundle
    assert {p: bundle.parties[p].role for p in bundle.parties} == {
        "broker-1": Role.BROKER,
        "northwind-mobility": Role.PARTNER,
        "aurora": Role.CITY,
        "borealis": Role.CITY,
        "cascadia": Role.CITY,
    }
    assert BrokerConfig.load(fed.broker_config).broker_id == "broker-1"
    for city, layout in fed.cities.items():
        assert bundle.parties[city].endpoint == layout.address
        assert NodeConfig.load(layout.config).city == city
        assert layout.data.exists() and layout.operator_key.stat().st_mode & 0o077 == 0
        operator = Section(load_toml(fed.root / f"operator-{city}.toml"), fed.root)
        assert (operator.str("city"), operator.str("node")) == (city, layout.address)
        assert operator.path_("cert") == layout.operator_cert
        assert operator.path_("ca_cert") == fed.ca_cert
