"""A node's configuration: the shared party fields plus its city, data source, catalogue and limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from domain.errors import ConfigError
from infra import storage
from infra.config import PartyConfig, Section, load_toml
from infra.limits import LimitsConfig
from keys.tokens import CLOCK_SKEW_S, MAX_LIFETIME_S
from node.catalogue import Catalogue
from node.transfers import TransferRules


@dataclass(frozen=True)
class NodeConfig(PartyConfig):
    """A city's node, as its TOML config file says (README, Configuration)."""

    # The city's id in the trust bundle (also the name of its log: citybroker/node/CITY).
    city: str
    # SQLAlchemy URL the datasets are read from (a read-only role will do); absent, a DuckDB
    # file beside a SQLite database, or the database itself when that is PostgreSQL.
    data: str
    # How a DuckDB data source is opened.
    duckdb: storage.DuckDBSettings
    # Common names of the operator certificates allowed to call ConsentService and
    # AgreementService.
    operators: tuple[str, ...]
    # The smallest cell size any agreement may ask for: published cells count at least this many.
    k_floor: int
    # The datasets the node answers on: table, resident column, category and typed fields.
    catalogue: Catalogue
    # Cross-border transfer rules by destination jurisdiction; the home jurisdiction is filled in
    # from the trust bundle when the node starts.
    transfers: TransferRules
    # Limits for a partner whose agreements set none, and the budget all partners share.
    limits: LimitsConfig
    # How far a broker's clock may differ from this node's before its signed requests are refused
    # (issued in the future, or older than a partner token can live): domain.freshness.
    clock_skew_s: int = CLOCK_SKEW_S

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
        config = cls(
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
            limits=LimitsConfig.from_config(
                top.section("limits", required=False), with_partners=False
            ),
            clock_skew_s=_clock_skew(top),
        )
        top.reject_unknown()
        return config


def _clock_skew(top: Section) -> int:
    """`clock_skew_s`, 0 to 300 seconds (default keys.tokens.CLOCK_SKEW_S)."""
    skew = top.int("clock_skew_s", CLOCK_SKEW_S)
    if not 0 <= skew <= MAX_LIFETIME_S:
        raise ConfigError(f"{top.path}: clock_skew_s must be 0 to {MAX_LIFETIME_S} seconds")
    return skew
