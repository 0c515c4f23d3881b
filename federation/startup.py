"""What every node and broker opens at start-up: its signing key, the verified trust bundle, its
migrated database (remembering the bundle version), and its Merkle log."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from audit import trust_history
from audit.log import MerkleLog
from federation import storage
from federation.errors import ConfigError
from keys import dsse, trust
from keys.ed25519 import Signer
from keys.trust import TrustStore


@dataclass
class Opened:
    signer: Signer
    trust: TrustStore
    engine: sa.Engine
    log: MerkleLog


def open_party(
    signing_key: Path, authority_key: Path, trust_bundle: Path, database: str, origin: str
) -> Opened:
    signer = Signer.load(signing_key)
    store = TrustStore(trust.load_authority_key(authority_key))
    try:
        envelope = dsse.Envelope.from_json(trust_bundle.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read trust bundle {trust_bundle}: {e.strerror}") from None
    bundle = store.install(envelope)
    engine = storage.create_engine(database)
    storage.upgrade(engine)
    trust_history.record(engine, bundle, envelope)
    return Opened(signer, store, engine, MerkleLog(engine, origin=origin, signer=signer))
