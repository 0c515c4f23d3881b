"""A broker's configuration: the shared party fields plus its id, timeouts and peer listener."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.config import PartyConfig, Section, load_toml


@dataclass(frozen=True)
class BrokerConfig(PartyConfig):
    """A broker, as its TOML config file says (README, Configuration)."""

    broker_id: str
    city_timeout_s: float
    witness_interval_s: float
    # Second listener, mTLS only, for federation parties (cities, auditors' tools) reading LogService.
    peer_listen: str

    @property
    def origin(self) -> str:
        """The name of this broker's Merkle log."""
        return f"citybroker/broker/{self.broker_id}"

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        """Read and check a broker config file; a ConfigError names the file and key that is wrong."""
        top = Section(load_toml(path), path)
        broker_id = top.str("broker")  # checked first: an error names what the file is about
        return cls(
            **PartyConfig.fields_from(top, default_listen="127.0.0.1:7000"),
            broker_id=broker_id,
            city_timeout_s=top.float("city_timeout_s", 5.0),
            witness_interval_s=top.float("witness_interval_s", 10.0),
            peer_listen=top.str("peer_listen", ""),
        )
