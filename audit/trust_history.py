"""The trust bundle versions a node or broker has installed, kept as signed, for later exports.

I/O boundary: reads and writes the party's database through the engine it is given.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select

from audit.schema import trust_bundles
from keys import dsse
from keys.trust import TrustBundle


def record(engine: Engine, bundle: TrustBundle, envelope: dsse.Envelope) -> None:
    """Remember this version (idempotent: a version already recorded is left as it was)."""
    with engine.begin() as conn:
        known = conn.execute(
            select(trust_bundles.c.version).where(trust_bundles.c.version == bundle.version)
        ).first()
        if known is None:
            conn.execute(
                insert(trust_bundles).values(
                    version=bundle.version,
                    envelope=envelope.to_json(),
                    installed_at=datetime.now(UTC),
                )
            )


def envelopes(engine: Engine) -> list[bytes]:
    """Every recorded version's envelope, as signed, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(trust_bundles.c.envelope).order_by(trust_bundles.c.version))
        return [bytes(r[0]) for r in rows]
