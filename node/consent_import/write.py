"""Writing a resolved batch (in the writer thread): its records, scopes and events in one
transaction, with the node's consent event counts (`node.consent_counts`) and its signed
consent-batch statements (`domain.consent_batch`), which once committed are appended to the node's
log (`node.consent_evidence`)."""

from __future__ import annotations

import json
import operator
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from domain import commitment, consent_batch
from domain.errors import CitybrokerError, StoreError
from keys import timefmt
from node import consent_counts
from node.consent_import.checkpoints import Checkpoints
from node.consent_import.codec import EVENT_COLUMNS, RECORD_COLUMNS, SCOPE_COLUMNS
from node.consent_import.records import IN_CHUNK, IN_JSON, chunked, db_message
from node.consent_import.resolve import Batch, Rec
from node.schema import consent_batches, consent_events, consent_records, consent_scopes

if TYPE_CHECKING:
    from node.consent_import.importer import ConsentImporter

_CHECK_SQLITE = (
    f"SELECT record_id, state, content_digest FROM consent_records WHERE record_id {IN_JSON}"
)
_INSERT_BATCH = consent_batches.insert()
_P_ID = sa.bindparam("b_id", type_=sa.String())
_P_STATE = sa.bindparam("b_state", type_=sa.String())
_P_UNTIL = sa.bindparam("b_until", type_=sa.DateTime())
# (name, statement, its parameters in the order of SQLite's positional SQL)
_STATEMENTS: tuple[tuple[str, sa.Insert | sa.Update, tuple[str, ...]], ...] = (
    ("records", consent_records.insert(), RECORD_COLUMNS),
    ("scopes", consent_scopes.insert(), SCOPE_COLUMNS),
    ("events", consent_events.insert(), EVENT_COLUMNS),
    (
        "move records",
        consent_records.update().where(consent_records.c.record_id == _P_ID).values(state=_P_STATE),
        ("b_state", "b_id"),
    ),
    (
        "move scopes",
        consent_scopes.update().where(consent_scopes.c.record_id == _P_ID).values(state=_P_STATE),
        ("b_state", "b_id"),
    ),
    (
        "renew records",
        consent_records.update()
        .where(consent_records.c.record_id == _P_ID)
        .values(valid_until=_P_UNTIL, state=_P_STATE, content_digest=sa.bindparam("b_digest")),
        ("b_until", "b_state", "b_digest", "b_id"),
    ),
    (
        "renew scopes",
        consent_scopes.update()
        .where(consent_scopes.c.record_id == _P_ID)
        .values(valid_until=_P_UNTIL, state=_P_STATE),
        ("b_state", "b_until", "b_id"),
    ),
)
_MARK_LOGGED = (
    consent_batches.update()
    .where(consent_batches.c.batch_id == sa.bindparam("b_id"))
    .values(log_index=sa.bindparam("b_index"))
)
_by_resident = operator.itemgetter(RECORD_COLUMNS.index("resident_id"))


class Executemany:
    """One executemany INSERT or UPDATE of rows given as tuples in the order of `names` (columns
    of an INSERT, bound parameters of an UPDATE): straight to the driver on SQLite, SQLAlchemy
    Core elsewhere."""

    def __init__(
        self,
        stmt: sa.Insert | sa.Update,
        names: Sequence[str],
        dialect: sa.Dialect,
        driver_level: bool,
    ) -> None:
        self.columns = tuple(names)
        self.stmt = stmt
        insert = isinstance(stmt, sa.Insert)
        compiled = stmt.compile(dialect=dialect, column_keys=list(names) if insert else None)
        self.driver_level = driver_level
        if driver_level and list(compiled.positiontup or ()) != list(names):
            raise AssertionError(f"unexpected parameter order in {compiled}")
        self.sql = str(compiled)

    def run(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Execute it for each of `rows`."""
        if not rows:
            return
        if self.driver_level:
            conn.exec_driver_sql(self.sql, list(rows))
        else:
            conn.execute(self.stmt, [dict(zip(self.columns, r, strict=True)) for r in rows])


def compile_statements(dialect: sa.Dialect, driver_level: bool) -> dict[str, Executemany]:
    """The statements a batch is written with, compiled once for the database."""
    return {
        name: Executemany(stmt, names, dialect, driver_level) for name, stmt, names in _STATEMENTS
    }


class Stale(Exception):
    """A record the batch changes was changed by someone else since the batch read it."""


class BatchWriter:
    """Writes one run's batches on a connection of its own; `again` resolves a batch again from
    the store when someone else changed its records meanwhile."""

    def __init__(
        self,
        importer: ConsentImporter,
        checkpoints: Checkpoints,
        again: Callable[[Batch], None],
    ) -> None:
        self._imp, self._checkpoints, self._again = importer, checkpoints, again
        self._engine, self._limits = importer.engine, importer.limits
        self.conn: sa.Connection | None = None
        self._synchronous = 2  # its synchronous setting before the run (2: FULL)

    def write_and_log(self, batch: Batch) -> None:
        """Write the batch in one transaction; once committed, append its signed statements to
        the log. A batch that cannot be written is left with its `failure` and an empty view."""
        if not batch.events:
            return
        attempts = self._limits.write_attempts
        for attempt in range(attempts):
            try:
                self.write(batch)
                break
            except (Stale, sa.exc.IntegrityError) as e:
                if attempt + 1 == attempts:
                    batch.failure = (
                        "the records kept changing under the import"
                        if isinstance(e, Stale)
                        else db_message(e)
                    )
                    break
                # Someone else wrote these records meanwhile: resolve again, from the store.
                self._again(batch)
            except sa.exc.SQLAlchemyError as e:
                batch.failure = db_message(e)
                break
        if batch.failure:
            batch.view = {}  # nothing of it is stored: the next batch must not build on it
            return
        try:
            self._log_statements(batch.statements)
        except CitybrokerError as e:
            raise StoreError(
                f"batch {batch.index + 1} (lines {batch.first_line}-{batch.last_line}) is "
                f"stored, but its signed statement could not be appended to the node's log: "
                f"{e.message}",
                reason="IMPORT_LOG_FAILED",
            ) from None
        self._checkpoints.committed()

    def _connection(self) -> sa.Connection:
        """The writer's own connection, for the whole run. On SQLite: a larger page cache
        (inserting at random keys into indexes bigger than the default 2 MB cache is slow), and
        under WAL synchronous=NORMAL, so a batch's commit does not wait for the disk: its
        statement's commit in the log right after is FULL, and syncing the WAL file then makes
        the batch's earlier frames durable too, before the batch is reported."""
        if self.conn is None:
            self.conn = conn = self._engine.connect()
            if self._engine.dialect.name == "sqlite":
                conn.exec_driver_sql(f"PRAGMA cache_size=-{self._limits.cache_kib}")
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                self._synchronous = int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())
                if str(mode).lower() == "wal":
                    conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
                conn.commit()
        return self.conn

    def close(self) -> None:
        """Give the connection back as the pool's other connections are."""
        if self.conn is not None:
            try:
                if self._engine.dialect.name == "sqlite":
                    self.conn.exec_driver_sql("PRAGMA cache_size=-2000")
                    self.conn.exec_driver_sql(f"PRAGMA synchronous={self._synchronous}")
                    self.conn.commit()
            finally:
                self.conn.close()
                self.conn = None

    def write(self, batch: Batch) -> None:
        """The batch's rows and signed statements, in one transaction; Stale if a record it
        changes is no longer as it was read."""
        inserts = self._imp.statements
        events, step = batch.events, consent_batch.MAX_EVENTS
        # Each event's digest is salted with a salt of its own (domain.commitment.member_digest):
        # the statement then names no guessable payload, and erasing the salt unlinks it.
        size = commitment.SALT_BYTES  # drawn at once: one system call per batch, not per event
        drawn = secrets.token_bytes(size * len(events))
        salts = [drawn[i : i + size] for i in range(0, len(drawn), size)]
        members = [
            commitment.member_digest(s, e.digest) for s, e in zip(salts, events, strict=True)
        ]
        envelopes = [
            self._imp.evidence.sign_batch(batch.at, members[i : i + step])
            for i in range(0, len(events), step)
        ]
        counts = Counter(e.event for e in events)
        conn = self._connection()
        self._checkpoints.before_write()
        batch.statements = []
        with conn.begin():
            _lock(conn)
            self._check_unchanged(conn, batch)
            if batch.creates:
                # Records by resident, so that the resident index is walked once, in order.
                # Scopes in file order: sorting them by the consent filter's key measured
                # slower, as new record ids go to the end of each key range anyway.
                creates = batch.creates.values()
                inserts["records"].run(conn, sorted((c[0] for c in creates), key=_by_resident))
                inserts["scopes"].run(conn, [s for c in creates for s in c[1]])
            self._apply_changes(conn, batch.changes)
            at_db = timefmt.to_db(batch.at)
            at = self._imp.codec.dt(at_db)
            rows = []
            for n, envelope in enumerate(envelopes):
                salt = secrets.token_bytes(commitment.SALT_BYTES)  # of its commitment in the log
                key = conn.execute(_INSERT_BATCH, {"at": at_db, "envelope": envelope, "salt": salt})
                assert key.inserted_primary_key is not None
                batch_id = int(key.inserted_primary_key[0])
                part = range(n * step, min((n + 1) * step, len(events)))
                for i in part:
                    e = events[i]
                    rows.append(
                        (e.record_id, e.event, e.actor, at, batch_id, e.valid_until, salts[i])
                    )
                batch.statements.append((batch_id, envelope, salt))
            inserts["events"].run(conn, rows)
            consent_counts.add(conn, consent_counts.IMPORT, counts)

    def _check_unchanged(self, conn: sa.Connection, batch: Batch) -> None:
        expected = {rid: rec.expect for rid, rec in batch.changes.items()}
        if not expected:
            return
        ids = sorted(expected)
        if self._imp.codec.driver_level:
            found: Iterable[Any] = conn.exec_driver_sql(_CHECK_SQLITE, (json.dumps(ids),))
        else:
            found = (
                row
                for part in chunked(ids, IN_CHUNK)
                for row in conn.execute(
                    sa.select(
                        consent_records.c.record_id,
                        consent_records.c.state,
                        consent_records.c.content_digest,
                    )
                    .where(consent_records.c.record_id.in_(part))
                    .with_for_update()  # PostgreSQL: held until the batch commits
                )
            )
        for rid, state, digest in found:
            if expected.get(rid) != (state, digest):
                raise Stale(rid)

    def _apply_changes(self, conn: sa.Connection, changes: dict[str, Rec]) -> None:
        """Update stored records (and their scopes) to the state this batch leaves them in."""
        moved: list[tuple[str, str]] = []
        renewed: list[tuple[Any, str, str, str]] = []
        dt = self._imp.codec.dt
        for rid, rec in changes.items():
            assert rec.expect is not None
            if rec.digest == rec.expect[1]:
                moved.append((rec.state.value, rid))
            else:
                assert rec.record is not None
                until = rec.record.valid_until
                renewed.append(
                    (dt(timefmt.to_db(until) if until else None), rec.state.value, rec.digest, rid)
                )
        run = self._imp.statements
        run["move records"].run(conn, moved)
        run["move scopes"].run(conn, moved)
        run["renew records"].run(conn, renewed)
        run["renew scopes"].run(conn, [(state, u, rid) for u, state, _, rid in renewed])

    def _log_statements(self, statements: list[tuple[int, bytes, bytes]]) -> None:
        """Append a batch's statements to the log, as salted commitments; their log indexes are
        stored in the log's own transaction, so a statement marked logged is in the log."""
        ids = [batch_id for batch_id, _, _ in statements]

        def mark(conn: sa.Connection, first: int) -> None:
            conn.execute(
                _MARK_LOGGED, [{"b_id": b, "b_index": first + k} for k, b in enumerate(ids)]
            )

        self._imp.evidence.log_batches([(env, salt) for _, env, salt in statements], mark)


def _lock(conn: sa.Connection) -> None:
    """Take the database's write lock first, so what the batch checks stays true until commit."""
    if conn.dialect.name == "sqlite":
        conn.execute(consent_events.delete().where(consent_events.c.event_id < 0))
