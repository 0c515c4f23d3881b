"""Witnessing both ways: collect cities' cosignatures of the broker's checkpoints, so that the broker
cannot later show an auditor a history other than the one the cities saw; and record each city's
latest checkpoint in the broker's log (broker.city_logs), so that a city cannot later show an
auditor its log cut before what it logged since the last result the broker received.

A background thread runs rounds: first the cities' checkpoints are fetched, checked and the new
ones recorded (one batch), then each city is offered the broker log's latest checkpoint, records
included, with a consistency proof from the last size that city cosigned; cosignatures are stored
for export. Failures are logged and retried on the next round; they never affect queries.

Broker replicas sharing one PostgreSQL database take turns: a round holds a transaction-scoped
advisory lock, and a replica that finds it taken skips its round, since the other is already
offering the same log (the latest checkpoint, read under the lock, so no replica offers an older
one after a newer one was cosigned).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from audit.log import MerkleLog
from audit.note import parse_checkpoint, unverified_body
from audit.schema import log_cosignatures
from broker.city_logs import CityLogWatch
from broker.gateway import CityGateway
from domain.errors import CallFailed
from keys.trust import Role, TrustStore

log = logging.getLogger("citybroker.witnessing")
# Key of the PostgreSQL advisory lock a witnessing round holds (one broker log per database).
_PG_ROUND_LOCK = 0x63697479_7769746E  # "citywitn"


@contextmanager
def _replicas_take_turns(engine: Engine) -> Iterator[bool]:
    """Whether this replica may run a round now; on PostgreSQL, held until the round ends."""
    if engine.dialect.name != "postgresql":
        yield True  # SQLite: one broker process per database file
        return
    with engine.begin() as conn:
        yield bool(conn.execute(select(func.pg_try_advisory_xact_lock(_PG_ROUND_LOCK))).scalar())


class WitnessCollector:
    """Offers the broker log's checkpoints to every city, through `gateway`, and stores the
    cosignatures; before each offer, `cities` (if given) records the cities' new checkpoints in
    the broker's log. Runs in a background thread between start() and stop()."""

    def __init__(
        self,
        engine: Engine,
        broker_log: MerkleLog,
        trust: TrustStore,
        gateway: CityGateway,
        interval_s: float,
        timeout_s: float = 5.0,
        cities: CityLogWatch | None = None,
    ) -> None:
        self._engine, self._log, self._trust, self._gateway = engine, broker_log, trust, gateway
        self.cities = cities
        self._interval, self._timeout = interval_s, timeout_s
        self._stop = threading.Event()
        # Rounds from the thread and from direct calls must not both store one cosignature.
        self._one_round = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start collecting in a background thread."""
        self._thread = threading.Thread(target=self._run, name="witnessing", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """New entries were logged: collect soon rather than at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread after one last round, so the final checkpoint is witnessed too."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._round()

    def _round(self) -> None:
        try:
            self.collect_once()
        except Exception:  # a round must never kill the thread; the next one retries
            log.exception("witnessing round failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._round()
            self._stop.wait(min(self._interval, 1.0))  # at most one round a second

    def _last_cosigned(self, city: str) -> int:
        with self._engine.connect() as conn:
            size = conn.execute(
                select(func.max(log_cosignatures.c.tree_size)).where(
                    log_cosignatures.c.witness == city
                )
            ).scalar()
        return int(size or 0)

    def lag(self) -> dict[str, int]:
        """Per city of the trust bundle, how many entries of the log it has not cosigned."""
        size = self._log.size()
        with self._engine.connect() as conn:
            cosigned = dict(
                conn.execute(
                    select(
                        log_cosignatures.c.witness, func.max(log_cosignatures.c.tree_size)
                    ).group_by(log_cosignatures.c.witness)
                ).all()
            )
        cities = self._trust.current.by_role(Role.CITY)
        return {c.id: max(0, size - int(cosigned.get(c.id) or 0)) for c in cities}

    def collect_once(self) -> int:
        """Record the cities' new checkpoints, then offer the latest checkpoint to every city
        once; returns how many cosigned it."""
        with self._one_round, _replicas_take_turns(self._engine) as ours:
            return self._collect() if ours else 0

    def _collect(self) -> int:
        if self.cities is not None:
            try:
                self.cities.record_once()
            except Exception:  # the offers still go out; the next round records again
                log.exception("recording the cities' checkpoints failed")
        note = self._log.checkpoint()
        _, size, _ = parse_checkpoint(unverified_body(note))
        cosigned = 0
        for city in self._trust.current.by_role(Role.CITY):
            old = self._last_cosigned(city.id)
            if size == 0 or old >= size:
                continue
            for _ in range(2):  # a second try from the size the witness says it knows
                if old >= size:
                    break  # the witness already cosigned this log further
                proof = self._log.consistency_proof(old, size) if old else []
                try:
                    line = self._gateway.add_checkpoint(
                        city.endpoint, old, note, proof, self._timeout
                    )
                except CallFailed as e:
                    err = e.error
                    if err.reason == "WITNESS_OLD_SIZE_MISMATCH" and "known_size" in err.metadata:
                        old = int(err.metadata["known_size"])
                        continue
                    log.warning(
                        "%s did not cosign size %d: %s %s %s",
                        city.id,
                        size,
                        err.code,
                        err.reason,
                        err.message,
                    )
                    break
                try:
                    with self._engine.begin() as conn:
                        conn.execute(
                            insert(log_cosignatures).values(
                                tree_size=size, witness=city.id, cosignature=line
                            )
                        )
                except IntegrityError:
                    break  # a replica stored this city's cosignature of this size meanwhile
                cosigned += 1
                break
        return cosigned
