"""A city's witness of brokers' logs (the C2SP witness role, over gRPC).

It cosigns a broker checkpoint only if the checkpoint is signed by that broker and extends, by a
valid consistency proof, the largest checkpoint it cosigned before; it then remembers the new one.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update

from audit.cosign import cosign, witness_name
from audit.merkle import verify_consistency
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from audit.schema import witnessed_logs
from federation.errors import FailedPrecondition, PermissionDenied
from keys.ed25519 import Signer
from keys.trust import Role, TrustStore


def broker_origin(broker: str) -> str:
    return f"citybroker/broker/{broker}"


class Witness:
    def __init__(self, engine: Engine, city: str, signer: Signer, trust: TrustStore) -> None:
        self._engine, self._signer, self._trust = engine, signer, trust
        self.name = witness_name(city)
        self._lock = threading.Lock()

    def add_checkpoint(self, broker: str, old_size: int, proof: list[bytes], note: str) -> str:
        """Check and cosign `note` from `broker`; returns one cosignature line."""
        party = self._trust.current.party(broker, Role.BROKER)
        if party is None:
            raise PermissionDenied(
                f"{broker} is not a broker in the trust bundle", reason="SIGNER_UNKNOWN"
            )
        origin = broker_origin(broker)
        body = verify_note(note, [NoteVerifier.for_key(origin, g.public) for g in party.keys])
        cp_origin, size, root = parse_checkpoint(body)
        if cp_origin != origin:
            raise PermissionDenied(
                f"checkpoint is for {cp_origin!r}, not {origin!r}",
                reason="CHECKPOINT_ORIGIN_MISMATCH",
            )
        with self._lock, self._engine.begin() as conn:
            row = conn.execute(
                select(witnessed_logs.c.tree_size, witnessed_logs.c.root).where(
                    witnessed_logs.c.origin == origin
                )
            ).first()
            known_size, known_root = (row[0], bytes(row[1])) if row else (0, b"")
            if old_size != known_size:
                raise FailedPrecondition(
                    f"this witness last cosigned size {known_size}, not {old_size}",
                    reason="WITNESS_OLD_SIZE_MISMATCH",
                    known_size=str(known_size),
                )
            if size < known_size:
                raise FailedPrecondition(
                    "checkpoint is older than one already cosigned",
                    reason="CHECKPOINT_STALE",
                    known_size=str(known_size),
                )
            if known_size == 0:
                if proof:
                    raise FailedPrecondition(
                        "no proof is needed from the empty tree", reason="PROOF_INVALID"
                    )
            elif size == known_size:
                if root != known_root:
                    raise PermissionDenied(
                        f"{origin} signed two trees of size {size}", reason="LOG_FORK"
                    )
            else:
                verify_consistency(known_size, size, proof, known_root, root)
            values = {"tree_size": size, "root": root, "updated_at": datetime.now(UTC)}
            if row:
                conn.execute(
                    update(witnessed_logs).where(witnessed_logs.c.origin == origin).values(values)
                )
            else:
                conn.execute(insert(witnessed_logs).values(origin=origin, **values))
        return cosign(body, self.name, self._signer, int(time.time()))
