"""What `citybroker keys check` reports: when each certificate and signing key a node or broker
uses stops being valid, against a warning threshold."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from broker.config import BrokerConfig
from domain.errors import CitybrokerError
from infra.config import PartyConfig, load_toml
from keys import trust
from keys.certs import read_certificate
from keys.ed25519 import Signer
from node.config import NodeConfig


class Standing(StrEnum):
    OK = "ok"
    SOON = "expires soon"
    EXPIRED = "expired"
    NOT_YET = "not yet valid"
    UNUSABLE = "unusable"
    RETIRED = "retired"  # an old key of the party, no longer signing: its end is expected

    @property
    def is_problem(self) -> bool:
        """True for what must be fixed (or rotated) now."""
        return self in (Standing.SOON, Standing.EXPIRED, Standing.NOT_YET, Standing.UNUSABLE)


@dataclass(frozen=True)
class Expiry:
    """One certificate or key: what it is, its file or id, when it ends and how that stands."""

    what: str
    name: str
    not_after: datetime | None
    standing: Standing
    note: str = ""


def standing(not_before: datetime, not_after: datetime, now: datetime, warn: timedelta) -> Standing:
    """How a validity window stands at `now` with `warn` of notice."""
    if now > not_after:
        return Standing.EXPIRED
    if now < not_before:
        return Standing.NOT_YET
    return Standing.SOON if not_after - now <= warn else Standing.OK


def party_of(config: Path) -> tuple[str, PartyConfig]:
    """The party id and config of a node's or broker's config file (ConfigError otherwise)."""
    data = load_toml(config)
    if "city" in data:
        node = NodeConfig.load(config)
        return node.city, node
    broker = BrokerConfig.load(config)
    return broker.broker_id, broker


def _certificate(what: str, path: Path, now: datetime, warn: timedelta) -> Expiry:
    try:
        info = read_certificate(path.read_bytes(), str(path))
    except OSError as e:
        return Expiry(what, str(path), None, Standing.UNUSABLE, f"cannot read: {e.strerror}")
    except CitybrokerError as e:
        return Expiry(what, str(path), None, Standing.UNUSABLE, e.message)
    return Expiry(
        what,
        str(path),
        info.not_after,
        standing(info.not_before, info.not_after, now, warn),
        f"CN={info.subject}",
    )


def _signing_keys(
    party_id: str, config: PartyConfig, now: datetime, warn: timedelta
) -> list[Expiry]:
    """The key in the signing key file against its grant in the trust bundle in force, and the
    party's other keys there (retired when the file holds another)."""
    try:
        in_use = Signer.load(config.signing_key).keyid
        bundle = trust.load_bundle(
            config.trust_bundle, trust.load_authority_key(config.authority_key)
        )
    except CitybrokerError as e:
        return [Expiry("signing key", str(config.signing_key), None, Standing.UNUSABLE, e.message)]
    party = bundle.party(party_id)
    grants = party.keys if party else ()
    rows = []
    for g in grants:
        mine = g.public.keyid == in_use
        s = standing(g.not_before, g.not_after, now, warn)
        note = "in use" if mine else "not in use"
        if not mine:  # an old key ending, or the next one waiting, is how rotation goes
            s = Standing.RETIRED if s in (Standing.EXPIRED, Standing.SOON) else Standing.OK
            if now < g.not_before:
                note += f", valid from {g.not_before:%Y-%m-%d}"
        rows.append(Expiry("signing key", g.public.keyid[:16] + "…", g.not_after, s, note))
    if not any(g.public.keyid == in_use for g in grants):
        rows.append(
            Expiry(
                "signing key",
                in_use[:16] + "…",
                None,
                Standing.UNUSABLE,
                f"not a key of {party_id} in trust bundle version {bundle.version}",
            )
        )
    return rows


def check(config: Path, now: datetime, warn: timedelta) -> tuple[str, list[Expiry]]:
    """The party id and every certificate and key its config uses, with how each stands."""
    party_id, party = party_of(config)
    return party_id, [
        _certificate("TLS certificate", party.tls.cert, now, warn),
        _certificate("CA certificate", party.tls.ca_cert, now, warn),
        *_signing_keys(party_id, party, now, warn),
    ]
