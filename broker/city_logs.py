"""The broker witnessing cities' logs: each city's latest signed checkpoint, checked and recorded
in the broker's own log, so that a city cannot later hand an auditor its log cut short.

I/O boundary: it reads cities' logs through a CityLogReader (their LogService), reads and writes
the broker's database (witnessed_logs: per city, the size and root last recorded) and appends to
the broker's log; the rules are audit.city_checkpoint's, over values.

In each witnessing round (broker.witnessing), for every city of the trust bundle: fetch its latest
checkpoint with a consistency proof from the size last recorded for it; check the city's signature
and origin and the proof; if the city logged something since, record the checkpoint as a signed
`witnessed-checkpoint` statement. A round's records are appended in one batch, with the new
witnessed_logs rows in the same transaction, before the broker's checkpoint is offered to the
cities for cosigning, so they are in the broker's signed, cosigned history and exported with it.

What a city logs only because it cosigned a broker checkpoint (its `cosignature` statements) is
not recorded on its own: recording it would grow the broker's log, which the cities would cosign,
which would grow theirs, without end. When all of a city's entries since the last record are
cosignatures, each shown by an inclusion proof to be in the checkpoint (so that no other entry can
be passed off as one), the checkpoint is checked and nothing is recorded; those entries are
covered by the next record, made when the city logs anything else (or when more than
MAX_UNRECORDED of them pile up).

Failures (a city down, a bad signature, a checkpoint that does not extend the last one recorded:
a fork, or an older one) are logged, nothing is recorded for that city, and the next round tries
again; they never affect queries. A fork is logged as an error: the city signed two histories.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, update

from audit.city_checkpoint import (
    LOG_KIND,
    CityCheckpoint,
    check_extends,
    is_cosignature,
    node_origin,
    record,
    verified_checkpoint,
)
from audit.log import MerkleLog
from audit.merkle import ProofError, leaf_hash, verify_inclusion
from audit.schema import witnessed_logs
from broker.gateway import CityLogReader
from domain.errors import CitybrokerError
from keys.ed25519 import Signer
from keys.trust import Party, Role, TrustStore

log = logging.getLogger("citybroker.witnessing")
# How many cosignature entries of a city may go unrecorded before its checkpoint is recorded anyway.
MAX_UNRECORDED = 64
# Entries read per ListEntries call while looking at what a city logged since the last record.
_PAGE = 16


@dataclass(frozen=True)
class _Record:
    checkpoint: CityCheckpoint
    extends: int  # the size recorded before for this city (0: none)


class CityLogWatch:
    """Records, in the broker's log, each city's latest checkpoint that extends the last one
    recorded for it and shows the city logged something besides cosignatures."""

    def __init__(
        self,
        engine: Engine,
        broker_log: MerkleLog,
        trust: TrustStore,
        reader: CityLogReader,
        broker: str,
        signer: Signer,
        timeout_s: float = 5.0,
    ) -> None:
        self._engine, self._log, self._trust, self._reader = engine, broker_log, trust, reader
        self._broker, self._signer, self._timeout = broker, signer, timeout_s
        # Per city, the newest checkpoint checked but not recorded (cosignatures only since the
        # last record): the same one again needs no second look.
        self._checked: dict[str, tuple[int, bytes]] = {}

    def recorded(self, city: str) -> tuple[int, bytes]:
        """The size and root last recorded for `city`'s log ((0, b"") for none)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(witnessed_logs.c.tree_size, witnessed_logs.c.root).where(
                    witnessed_logs.c.origin == node_origin(city)
                )
            ).first()
        return (int(row[0]), bytes(row[1])) if row else (0, b"")

    def record_once(self) -> int:
        """Check every city's latest checkpoint once and record the new ones; returns how many
        were recorded. A city that fails is logged and skipped until the next round."""
        records = []
        for city in self._trust.current.by_role(Role.CITY):
            try:
                found = self._check(city)
            except CitybrokerError as e:
                level = logging.ERROR if e.reason == "LOG_FORK" else logging.WARNING
                log.log(level, "%s's checkpoint not recorded: %s %s", city.id, e.reason, e.message)
                continue
            if found is not None:
                records.append(found)
        if not records:
            return 0
        entries = [record(self._broker, r.checkpoint, r.extends, self._signer) for r in records]

        def remember(conn: Connection, _: int) -> None:
            now = datetime.now(UTC)
            for r in records:
                values = {"tree_size": r.checkpoint.size, "root": r.checkpoint.root}
                origin = node_origin(r.checkpoint.city)
                if r.extends:
                    conn.execute(
                        update(witnessed_logs)
                        .where(witnessed_logs.c.origin == origin)
                        .values(updated_at=now, **values)
                    )
                else:
                    conn.execute(
                        insert(witnessed_logs).values(origin=origin, updated_at=now, **values)
                    )

        self._log.append_many([e.to_json() for e in entries], LOG_KIND, side_write=remember)
        for r in records:
            self._checked.pop(r.checkpoint.city, None)
        return len(records)

    def _check(self, city: Party) -> _Record | None:
        """The record to make of `city`'s latest checkpoint, or None when there is nothing new;
        raises what failed (a CitybrokerError)."""
        known = self.recorded(city.id)
        head = self._reader.log_head(city.endpoint, known[0], self._timeout)
        seen = verified_checkpoint(city.id, head.checkpoint, [g.public for g in city.keys])
        if seen.size == 0 or (seen.size, seen.root) in (known, self._checked.get(city.id)):
            return None
        check_extends(known, seen, head.proof)
        if self._only_cosignatures(city, known[0], seen):
            self._checked[city.id] = (seen.size, seen.root)
            return None
        return _Record(seen, known[0])

    def _only_cosignatures(self, city: Party, start: int, seen: CityCheckpoint) -> bool:
        """Whether every entry of `city`'s log from `start` to `seen.size` is a cosignature
        proved to be in `seen`'s tree. Anything else, or any doubt, means: record it."""
        if seen.size - start > MAX_UNRECORDED:
            return False
        index = start
        while index < seen.size:
            page = self._reader.log_entries(
                city.endpoint, index, min(_PAGE, seen.size - index), self._timeout
            )
            if not page:
                return False
            for served in page:
                if served.index != index or index >= seen.size or not is_cosignature(served.entry):
                    return False
                proof = self._reader.inclusion_proof(city.endpoint, index, seen.size, self._timeout)
                try:
                    verify_inclusion(index, seen.size, leaf_hash(served.entry), proof, seen.root)
                except ProofError:
                    log.warning("%s served entry %d that is not in its checkpoint", city.id, index)
                    return False
                index += 1
        return True
