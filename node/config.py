"""A node's configuration: the shared party fields plus its city, data source, catalogue and limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra import storage
from infra.config import PartyConfig, Section, load_toml
from node.catalogue import Catalogue
from node.transfers import TransferRules


@dataclass(frozen=True)
class NodeConfig(PartyConfig):
    """A city's node, as its TOML config file says (README, Configuration)."""

    city: str
    data: str
    duckdb: storage.DuckDBSettings
    operators: tuple[str, ...]
    k_floor: int
    catalogue: Catalogue
    # Home jurisdiction filled in from the trust bundle when the node starts.
    transfers: TransferRules

    @property
    def origin(self) -> str:
        """The name of this node's Merkle log."""
        return f"citybroker/node/{self.city}"

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        """Read and check a node config file; a ConfigError names the file and key that is wrong."""
        top = Section(load_toml(path), path)
        city = top.str("city")  # checked first: an error names what the file is about
        party = PartyConfig.fields_from(top, default_listen="127.0.0.1:7100")
        database = party["database"]
        return cls(
            **party,
            city=city,
            data=(
                top.database_url("data")
                if "data" in top.data
                else storage.default_data_url(database)
            ),
            duckdb=storage.DuckDBSettings.from_config(top.section("duckdb", required=False)),
            operators=tuple(top.strs("operators", [])),
            k_floor=top.int("k_floor", 5),
            catalogue=Catalogue.from_config(top.section("datasets")),
            transfers=TransferRules.from_config("", top.section("transfers", required=False)),
        )
