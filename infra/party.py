"""What every node and broker opens at start-up: its signing key, the verified trust bundle, its
migrated database (remembering the bundle version), and its Merkle log."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from audit import trust_history
from audit.log import MerkleLog
from domain.errors import ConfigError
from infra import storage
from infra.config import PartyConfig
from keys import dsse, trust
from keys.ed25519 import Signer
from keys.rotation import RotatingSigner
from keys.trust import TrustStore


@dataclass
class Opened:
    """A party's key, trust store, migrated database and Merkle log, ready to serve."""

    # Replaceable while serving: infra.trust_watch rotates it.
    signer: RotatingSigner
    trust: TrustStore
    engine: sa.Engine
    log: MerkleLog


def open_party(config: PartyConfig, origin: str) -> Opened:
    """Load the signing key, verify and install the trust bundle, migrate the database (recording
    the bundle version) and open the Merkle log named `origin`."""
    signer = RotatingSigner(Signer.load(config.signing_key))
    store = TrustStore(trust.load_authority_key(config.authority_key))
    try:
        envelope = dsse.Envelope.from_json(config.trust_bundle.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read trust bundle {config.trust_bundle}: {e.strerror}") from None
    bundle = store.install(envelope)
    engine = storage.create_engine(config.database)
    storage.upgrade(engine)
    trust_history.record(engine, bundle, envelope)
    return Opened(signer, store, engine, MerkleLog(engine, origin=origin, signer=signer))
