"""A broker's configuration: the shared party fields plus its id, timeouts, peer listener and
per-partner limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.config import PartyConfig, Section, load_toml
from infra.limits import LimitsConfig


@dataclass(frozen=True)
class BrokerConfig(PartyConfig):
    """A broker, as its TOML config file says (README, Configuration)."""

    # The broker's id in the trust bundle: partners' tokens name it as their audience.
    broker_id: str
    # Seconds the broker waits for each city's answer before reporting it unavailable.
    city_timeout_s: float
    # Seconds between rounds of collecting cities' signatures on the broker's log checkpoint.
    witness_interval_s: float
    # Second listener, mTLS only, for federation parties (cities, auditors' tools) reading LogService.
    peer_listen: str
    # Per-partner rate and concurrency caps at the broker's edge ([limits], [limits.partners.ID]).
    limits: LimitsConfig = LimitsConfig()

    @property
    def origin(self) -> str:
        """The name of this broker's Merkle log."""
        return f"citybroker/broker/{self.broker_id}"

    @classmethod
    def load(cls, path: Path) -> BrokerConfig:
        """Read and check a broker config file; a ConfigError names the file and key that is wrong."""
        top = Section(load_toml(path), path)
        broker_id = top.str("broker")  # checked first: an error names what the file is about
        config = cls(
            **PartyConfig.fields_from(top, default_listen="127.0.0.1:7000"),
            broker_id=broker_id,
            city_timeout_s=top.float("city_timeout_s", 5.0),
            witness_interval_s=top.float("witness_interval_s", 10.0),
            peer_listen=top.str("peer_listen", ""),
            limits=LimitsConfig.from_config(
                top.section("limits", required=False), with_partners=True
            ),
        )
        top.reject_unknown()
        return config
