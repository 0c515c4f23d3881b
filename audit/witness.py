"""A city's witness of brokers' logs (the C2SP witness role, over gRPC).

I/O boundary: it reads and writes the city's database (what it last cosigned) and appends to the
city's log; the extension rule itself is `_check_extends`, over values.

It cosigns a broker checkpoint only if the checkpoint is signed by that broker and extends, by a
valid consistency proof, the largest checkpoint it cosigned before; it then remembers the new one.

Each cosignature is also logged in the city's own Merkle log, as a signed `cosignature` statement
(the broker's origin, the tree size and root, the cosignature line), in the transaction that
remembers it, before it is returned. So the evidence of what a city saw of a broker's log is in
the city's hands too: an auditor finds a broker checkpoint that a city cosigned and the broker's
export lacks or contradicts, and a cosignature the broker's export dropped (audit.verifier).
"""

from __future__ import annotations

import base64
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, update

from audit.cosign import cosign, witness_name
from audit.log import MerkleLog
from audit.merkle import verify_consistency
from audit.note import NoteVerifier, parse_checkpoint, verify_note
from audit.schema import witnessed_logs
from domain.errors import FailedPrecondition, PermissionDenied
from domain.kinds import LogKind, Statement
from keys import dsse, timefmt
from keys.ed25519 import Signer
from keys.trust import Role, TrustStore

COSIGNATURE, LOG_KIND = Statement.COSIGNATURE, LogKind.WITNESS


def broker_origin(broker: str) -> str:
    """The origin line of `broker`'s log checkpoints."""
    return f"citybroker/broker/{broker}"


class Witness:
    """A city's witness: cosigns brokers' checkpoints that extend what it cosigned before."""

    def __init__(
        self, engine: Engine, city: str, signer: Signer, trust: TrustStore, log: MerkleLog
    ) -> None:
        """`log`: the city's own Merkle log, where each cosignature is logged."""
        self._engine, self._signer, self._trust, self._log = engine, signer, trust, log
        self.city = city
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
        with self._lock:
            with self._engine.connect() as conn:
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
            _check_extends(origin, (known_size, known_root), (size, root), proof)
            line = cosign(body, self.name, self._signer, int(time.time()))
            statement = self._statement(broker, origin, size, root, line)

            def remember(conn: Connection, _: int) -> None:
                values = {"tree_size": size, "root": root, "updated_at": datetime.now(UTC)}
                if row:
                    conn.execute(
                        update(witnessed_logs)
                        .where(witnessed_logs.c.origin == origin)
                        .values(values)
                    )
                else:
                    conn.execute(insert(witnessed_logs).values(origin=origin, **values))

            # Serialised by the lock, so what was read above still stands when this commits.
            self._log.append_many([statement.to_json()], LOG_KIND, side_write=remember)
        return line

    def _statement(
        self, broker: str, origin: str, size: int, root: bytes, line: str
    ) -> dsse.Envelope:
        """The signed record, for the city's own log, that it cosigned this checkpoint."""
        return dsse.sign(
            COSIGNATURE,
            {
                "city": self.city,
                "at": timefmt.fmt(timefmt.now()),
                "broker": broker,
                "origin": origin,
                "tree_size": size,
                "root": base64.b64encode(root).decode(),
                "cosignature": line,
            },
            self._signer,
        )


def _check_extends(
    origin: str, known: tuple[int, bytes], new: tuple[int, bytes], proof: list[bytes]
) -> None:
    """The new checkpoint must extend the last one cosigned: never older, never a fork."""
    (known_size, known_root), (size, root) = known, new
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
            raise PermissionDenied(f"{origin} signed two trees of size {size}", reason="LOG_FORK")
    else:
        verify_consistency(known_size, size, proof, known_root, root)
