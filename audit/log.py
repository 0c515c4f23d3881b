"""An append-only RFC 6962 Merkle log in SQL (SQLAlchemy Core; SQLite and PostgreSQL).

Durability: `append` returns only after the entry, the tree nodes it completes and a freshly
signed checkpoint covering it are committed in one transaction. Appends from many threads are
group-committed by one writer thread, so a burst of N appends costs one commit, not N.

For SQLite the caller creates the engine. Use WAL (`PRAGMA journal_mode=WAL`) so readers never
block the writer, and `PRAGMA synchronous=FULL` so a commit survives power loss; under WAL the
default NORMAL may lose the last commits, which breaks "durable before the response is sent".
An in-memory SQLite database needs `poolclass=StaticPool` and `check_same_thread=False`, since the
writer thread must see the same database as the caller.

Tables come from `audit.schema.metadata` (create them with Alembic or `metadata.create_all`).
One database holds one log. Several `MerkleLog` objects may share it (for instance broker
replicas on one PostgreSQL): a writer whose view is stale hits a primary-key conflict, reloads
the stored tree and retries, so indexes stay unique and every checkpoint signs the stored tree.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, tuple_
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    consistency_proof_ranges,
    fold_subtrees,
    inclusion_proof,
    inclusion_proof_ranges,
    leaf_hash,
    perfect_subtrees,
)
from audit.note import (
    NoteError,
    NoteVerifier,
    checkpoint_body,
    parse_checkpoint,
    sign_note,
    unverified_body,
)
from audit.schema import log_checkpoints, log_entries, log_nodes
from domain.errors import CitybrokerError, InvalidArgument, NotFound, StoreError, TooLarge
from keys.ed25519 import Signer

MAX_KIND_LENGTH = 64
# Key of the PostgreSQL advisory lock that serialises appenders (one log per database).
_PG_LOCK_KEY = 0x63697479_6C6F67  # "citylog"


# Statements of every append, built once: SQLAlchemy then reuses their cache keys and compiled forms.
# Any write statement takes SQLite's single RESERVED lock, even one that changes nothing.
_LOCK_SQLITE = log_checkpoints.delete().where(log_checkpoints.c.tree_size < 0)
_LOCK_POSTGRESQL = select(func.pg_advisory_xact_lock(_PG_LOCK_KEY))
_MAX_INDEX = select(func.max(log_entries.c.idx))
_INSERT_ENTRIES = insert(log_entries)
_INSERT_NODES = insert(log_nodes)
_INSERT_CHECKPOINT = insert(log_checkpoints)


def _lock_log(conn: Connection) -> bool:
    """Take the database's write lock for this transaction; False where no such lock is known
    (then concurrent writers rely on the primary-key conflict and retry)."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.execute(_LOCK_SQLITE)
        return True
    if dialect == "postgresql":
        conn.execute(_LOCK_POSTGRESQL)
        return True
    return False


def lock_log(conn: Connection) -> bool:
    """Take the log's write lock in a transaction of the log's database (as every append does),
    so a change to rows that appends' side writes read is serialised with them."""
    return _lock_log(conn)


@dataclass(frozen=True)
class LogLimits:
    """Safety limits of one log."""

    max_entry_bytes: int = 1 << 20
    # Per transaction: bounds commit latency and memory while keeping batching effective. One
    # append_many larger than max_batch_entries still commits alone, atomically.
    max_batch_entries: int = 8192
    max_batch_bytes: int = 64 << 20
    max_read_entries: int = 100_000
    # Attempts when another writer on the same database got there first.
    conflict_retries: int = 8

    def __post_init__(self) -> None:
        for name in (
            "max_entry_bytes",
            "max_batch_entries",
            "max_batch_bytes",
            "max_read_entries",
            "conflict_retries",
        ):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"log limit {name} must be at least 1")
        if self.max_entry_bytes > self.max_batch_bytes:
            raise InvalidArgument("log limit max_entry_bytes must not exceed max_batch_bytes")


@dataclass(frozen=True)
class LogRecord:
    """One stored entry with its kind and commit time."""

    index: int
    entry: bytes
    kind: str
    created_at: datetime


# Rows the caller wants committed in the same transaction as its entries, written by a callback
# that gets the connection and the first index of the entries (e.g. the node's transparency record).
SideWrite = Callable[[Connection, int], None]


class _Request:
    __slots__ = ("entries", "kind", "size", "future", "side_write")

    def __init__(
        self, entries: list[bytes], kind: str, size: int, side_write: SideWrite | None = None
    ) -> None:
        self.entries = entries
        self.kind = kind
        self.size = size
        self.side_write = side_write
        self.future: Future[int] = Future()


class _SideWriteRefused(Exception):
    """A side write refused its request (a CitybrokerError): that request alone fails."""

    def __init__(self, request: _Request, error: CitybrokerError) -> None:
        super().__init__(error.message)
        self.request, self.error = request, error


_STOP = object()

NodeKey = tuple[int, int]


class MerkleLog:
    """An append-only Merkle log with group commit and a signed checkpoint after every batch."""

    def __init__(
        self,
        engine: Engine,
        origin: str,
        signer: Signer,
        *,
        key_name: str | None = None,
        limits: LogLimits | None = None,
    ) -> None:
        self._engine = engine
        self._origin = origin
        self._signer = signer
        self._key_name = key_name if key_name is not None else origin
        self._limits = limits or LogLimits()
        try:
            checkpoint_body(origin, 0, EMPTY_ROOT)
            self.verifier = NoteVerifier.for_key(self._key_name, signer.public)
        except NoteError as e:
            raise InvalidArgument(f"cannot sign checkpoints for this log: {e.message}") from None

        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # The committed right border of the tree, owned by the writer thread after start-up;
        # None means "unknown after a failure, reload from the store before writing".
        self._frontier: CompactRange | None = self._open()
        # Set once another writer (a replica on the same database) is seen: from then on every
        # batch reads the stored size under the lock instead of failing on a stale view first.
        self._shared = False
        self._writer = threading.Thread(
            target=self._run, name=f"merkle-log-writer {origin}", daemon=True
        )
        self._writer.start()

    # -- start-up --------------------------------------------------------------------------

    def _open(self) -> CompactRange:
        for _ in range(3):
            try:
                with self._engine.begin() as conn:
                    # Checkpoint first, then entries: rows commit together, so under READ
                    # COMMITTED a concurrent writer can only make the entries look newer.
                    latest = conn.execute(
                        select(log_checkpoints.c.tree_size, log_checkpoints.c.note)
                        .order_by(log_checkpoints.c.tree_size.desc())
                        .limit(1)
                    ).first()
                    frontier = self._load_frontier(conn)
                    if latest is not None:
                        self._check_stored_checkpoint(conn, frontier, latest.tree_size, latest.note)
                    else:
                        # A new log publishes its empty head, so checkpoint() always answers.
                        conn.execute(insert(log_checkpoints), [self._checkpoint_row(frontier)])
                return frontier
            except IntegrityError:
                # Another instance opened the same new log at the same moment: check its work.
                continue
            except SQLAlchemyError as e:
                raise StoreError(f"cannot open the Merkle log: {type(e).__name__}") from e
        raise StoreError("cannot open the Merkle log: it kept changing while opening")

    def _check_stored_checkpoint(
        self, conn: Connection, frontier: CompactRange, size: int, note: str
    ) -> None:
        try:
            origin, cp_size, cp_root = parse_checkpoint(unverified_body(note))
        except NoteError as e:
            raise StoreError(f"stored checkpoint {size} is malformed: {e.message}") from None
        if origin != self._origin:
            raise StoreError(
                f"this database holds the log {origin!r}, not {self._origin!r}",
                reason="LOG_ORIGIN_MISMATCH",
            )
        if cp_size != size or cp_size > frontier.size:
            raise StoreError(
                f"stored checkpoint for size {cp_size} does not match the {frontier.size} "
                "stored entries",
                reason="LOG_CORRUPT",
            )
        # Refusing to start keeps the log from ever signing a tree inconsistent with this one.
        if self._root_at(conn, cp_size) != cp_root:
            raise StoreError(
                f"stored tree does not match its signed checkpoint at size {cp_size}",
                reason="LOG_CORRUPT",
            )

    def _load_frontier(self, conn: Connection) -> CompactRange:
        size = self._stored_size(conn)
        keys = perfect_subtrees(0, size) if size else []
        nodes = _fetch_nodes(conn, keys)
        return CompactRange(size, [nodes[k] for k in keys])

    def _checkpoint_row(self, frontier: CompactRange) -> dict[str, Any]:
        body = checkpoint_body(self._origin, frontier.size, frontier.root())
        return {
            "tree_size": frontier.size,
            "note": sign_note(body, self._key_name, self._signer),
            "created_at": datetime.now(UTC),
        }

    # -- appending -------------------------------------------------------------------------

    def append(self, entry: bytes, kind: str) -> int:
        """Append one entry; return its index once it is committed."""
        return self._submit([entry], kind)

    def append_many(
        self, entries: Sequence[bytes], kind: str, side_write: SideWrite | None = None
    ) -> list[int]:
        """Append entries atomically at consecutive indexes; return them once committed.

        `side_write` runs inside the same transaction (in the writer thread), so rows that belong
        with these entries are durable with them at the cost of no extra commit. If it raises a
        CitybrokerError (a refusal, e.g. a spent budget), these entries are not appended, this
        call raises it, and the rest of the batch commits without them; any other failure fails
        the whole batch it rode in.
        """
        entries = list(entries)
        if not entries:
            return []
        first = self._submit(entries, kind, side_write)
        return list(range(first, first + len(entries)))

    def _submit(self, entries: list[bytes], kind: str, side_write: SideWrite | None = None) -> int:
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LENGTH:
            raise InvalidArgument(f"entry kind must be 1 to {MAX_KIND_LENGTH} characters")
        total = 0
        for i, entry in enumerate(entries):
            if not isinstance(entry, bytes):
                raise InvalidArgument(f"log entry {i} is {type(entry).__name__}, not bytes")
            if len(entry) > self._limits.max_entry_bytes:
                raise TooLarge(
                    f"log entry {i} is {len(entry)} bytes, over {self._limits.max_entry_bytes}"
                )
            total += len(entry)
        if total > self._limits.max_batch_bytes:
            raise TooLarge(
                f"{total} bytes of entries in one call, over {self._limits.max_batch_bytes}"
            )
        request = _Request(entries, kind, total, side_write)
        with self._lock:
            if self._closed:
                raise StoreError("the Merkle log is closed", reason="LOG_CLOSED")
            self._queue.put(request)
        return request.future.result()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, _Request)
            batch = [item]
            count, size = len(item.entries), item.size
            # Whatever queued up during the previous commit rides along in this one.
            while count < self._limits.max_batch_entries and size < self._limits.max_batch_bytes:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Request)
                batch.append(item)
                count += len(item.entries)
                size += item.size
            self._write_batch(batch)

    def _write_batch(self, batch: list[_Request]) -> None:
        error: CitybrokerError | None = None
        attempt = 0
        while attempt < self._limits.conflict_retries:
            attempt += 1
            try:
                if self._frontier is None:
                    with self._engine.connect() as conn:
                        self._frontier = self._load_frontier(conn)
                # First try on this writer's own view of the tree: if another writer appended
                # since, the entries' primary keys conflict and the retry checks under the lock.
                frontier, firsts = self._commit_batch(
                    self._frontier, batch, attempt > 1 or self._shared
                )
            except _SideWriteRefused as refused:
                # Rolled back: the others go again without it (not a conflict, so no attempt).
                refused.request.future.set_exception(refused.error)
                batch = [r for r in batch if r is not refused.request]
                attempt -= 1
                if not batch:
                    return
                continue
            except IntegrityError:
                # A different writer appended first; our view of the tree is stale.
                self._frontier = None
                self._shared = True
                error = StoreError("the Merkle log kept changing under this writer")
                continue
            except SQLAlchemyError as e:
                # The outcome of a failed commit is unknown, so the next batch reloads.
                self._frontier = None
                error = StoreError(f"cannot write to the Merkle log: {type(e).__name__}")
                break
            except CitybrokerError as e:
                self._frontier = None
                error = e
                break
            except Exception as e:
                # Whatever went wrong, the waiters must wake up rather than hang forever.
                self._frontier = None
                error = StoreError(f"internal error in the Merkle log writer: {type(e).__name__}")
                break
            self._frontier = frontier
            for request, first in zip(batch, firsts, strict=True):
                request.future.set_result(first)
            return
        assert error is not None
        for request in batch:
            request.future.set_exception(error)

    def _commit_batch(
        self, committed: CompactRange, batch: list[_Request], check_size: bool = True
    ) -> tuple[CompactRange, list[int]]:
        with self._engine.begin() as conn:
            # Holding the write lock from the first statement, a stale view (another writer on
            # the same database appended) is refreshed here instead of failing and retrying.
            if _lock_log(conn) and check_size and self._stored_size(conn) != committed.size:
                committed = self._load_frontier(conn)
            frontier = committed.copy()
            firsts, entry_rows, node_rows = _rows(frontier, batch, datetime.now(UTC))
            # Side writes first: one that refuses its request does so before the tree with its
            # entries is signed.
            for request, first in zip(batch, firsts, strict=True):
                if request.side_write is not None:
                    try:
                        request.side_write(conn, first)
                    except CitybrokerError as e:
                        raise _SideWriteRefused(request, e) from None
            # Signed before commit but published only after it: if the commit fails the note is
            # dropped, so no one ever sees a checkpoint for a tree that is not stored.
            checkpoint = self._checkpoint_row(frontier)
            conn.execute(_INSERT_ENTRIES, entry_rows)
            if node_rows:
                conn.execute(_INSERT_NODES, node_rows)
            conn.execute(_INSERT_CHECKPOINT, [checkpoint])
        return frontier, firsts

    # -- reading ---------------------------------------------------------------------------

    def size(self) -> int:
        """The number of committed entries."""
        with self._reading() as conn:
            return self._stored_size(conn)

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree of `size` entries (by default, all committed)."""
        with self._reading() as conn:
            current = self._stored_size(conn)
            size = current if size is None else size
            self._check_size(size, current)
            return self._root_at(conn, size)

    def entries(self, start: int, end: int) -> list[bytes]:
        """The entries in [start, end)."""
        return [r.entry for r in self.records(start, end)]

    def records(self, start: int, end: int) -> list[LogRecord]:
        """Entries in [start, end) with their kind and commit time."""
        with self._reading() as conn:
            current = self._stored_size(conn)
            if not 0 <= start <= end <= current:
                raise InvalidArgument(
                    f"entry range [{start}, {end}) is outside the log of size {current}"
                )
            if end - start > self._limits.max_read_entries:
                raise TooLarge(f"read at most {self._limits.max_read_entries} entries at once")
            rows = conn.execute(
                select(
                    log_entries.c.idx,
                    log_entries.c.entry,
                    log_entries.c.kind,
                    log_entries.c.created_at,
                )
                .where(log_entries.c.idx >= start, log_entries.c.idx < end)
                .order_by(log_entries.c.idx)
            ).all()
        if len(rows) != end - start:
            raise StoreError("the Merkle log store is missing entries", reason="LOG_CORRUPT")
        return [LogRecord(r.idx, bytes(r.entry), r.kind, _as_utc(r.created_at)) for r in rows]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Proof that entry `index` is in the tree of `size` entries."""
        with self._reading() as conn:
            self._check_size(size, self._stored_size(conn))
            if not 0 <= index < size:
                raise InvalidArgument(f"leaf index {index} is outside a tree of size {size}")
            subtrees = _PrefetchedSubtrees(conn, inclusion_proof_ranges(index, size))
            return inclusion_proof(index, size, subtrees)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Proof that the tree of size2 extends the tree of size1 (0 < size1 <= size2)."""
        with self._reading() as conn:
            self._check_size(size2, self._stored_size(conn))
            if not 0 < size1 <= size2:
                raise InvalidArgument(
                    f"a consistency proof needs 0 < size1 <= size2, got {size1} and {size2}; "
                    "every tree extends the empty tree, so there is nothing to prove from 0"
                )
            if size1 == size2:
                return []
            subtrees = _PrefetchedSubtrees(conn, consistency_proof_ranges(size1, size2))
            return consistency_proof(size1, size2, subtrees)

    def checkpoint(self) -> str:
        """The latest signed checkpoint note, covering every committed entry."""
        with self._reading() as conn:
            note = conn.execute(
                select(log_checkpoints.c.note).order_by(log_checkpoints.c.tree_size.desc()).limit(1)
            ).scalar_one_or_none()
        if note is None:
            raise StoreError("the Merkle log has no checkpoint", reason="LOG_CORRUPT")
        return str(note)

    def checkpoint_at(self, size: int) -> str:
        """The checkpoint signed when the tree had exactly `size` entries, if one was signed."""
        with self._reading() as conn:
            note = conn.execute(
                select(log_checkpoints.c.note).where(log_checkpoints.c.tree_size == size)
            ).scalar_one_or_none()
        if note is None:
            raise NotFound(f"no checkpoint was signed at tree size {size}")
        return str(note)

    def close(self) -> None:
        """Commit every append already submitted, then stop the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()

    def __enter__(self) -> MerkleLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- store helpers ---------------------------------------------------------------------

    def _reading(self) -> _StoreRead:
        return _StoreRead(self._engine)

    @staticmethod
    def _stored_size(conn: Connection) -> int:
        last = conn.execute(_MAX_INDEX).scalar_one_or_none()
        return 0 if last is None else int(last) + 1

    @staticmethod
    def _check_size(size: int, current: int) -> None:
        if not 0 <= size <= current:
            raise InvalidArgument(f"tree size {size} is outside the log of size {current}")

    def _root_at(self, conn: Connection, size: int) -> bytes:
        if size == 0:
            return EMPTY_ROOT
        keys = perfect_subtrees(0, size)
        nodes = _fetch_nodes(conn, keys)
        return fold_subtrees([nodes[k] for k in keys])


def _rows(
    frontier: CompactRange, batch: list[_Request], now: datetime
) -> tuple[list[int], list[dict[str, Any]], list[dict[str, Any]]]:
    """Append the batch's leaves to `frontier`; return each request's first index, the entry
    rows and the tree node rows they complete."""
    firsts: list[int] = []
    entry_rows: list[dict[str, Any]] = []
    node_rows: list[dict[str, Any]] = []
    for request in batch:
        firsts.append(frontier.size)
        for entry in request.entries:
            lh = leaf_hash(entry)
            entry_rows.append(
                {
                    "idx": frontier.size,
                    "entry": entry,
                    "leaf_hash": lh,
                    "kind": request.kind,
                    "created_at": now,
                }
            )
            for level, index, h in frontier.append(lh):
                node_rows.append({"level": level, "idx": index, "hash": h})
    return firsts, entry_rows, node_rows


def _fetch_nodes(conn: Connection, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
    """Stored hashes of the given perfect subtrees, in at most two queries."""
    wanted = set(keys)
    leaves = sorted(i for level, i in wanted if level == 0)
    inner = sorted(k for k in wanted if k[0] > 0)
    found: dict[NodeKey, bytes] = {}
    if leaves:
        leaf_rows = conn.execute(
            select(log_entries.c.idx, log_entries.c.leaf_hash).where(log_entries.c.idx.in_(leaves))
        )
        found.update(((0, r.idx), bytes(r.leaf_hash)) for r in leaf_rows)
    if inner:
        node_rows = conn.execute(
            select(log_nodes.c.level, log_nodes.c.idx, log_nodes.c.hash).where(
                tuple_(log_nodes.c.level, log_nodes.c.idx).in_(inner)
            )
        )
        found.update(((r.level, r.idx), bytes(r.hash)) for r in node_rows)
    if len(found) != len(wanted):
        raise StoreError("the Merkle log store is missing tree nodes", reason="LOG_CORRUPT")
    return found


class _PrefetchedSubtrees:
    """A SubtreeHash over nodes fetched up front: one round trip per proof, not one per hash."""

    def __init__(self, conn: Connection, ranges: Iterable[tuple[int, int]]) -> None:
        keys = {k for start, end in ranges for k in perfect_subtrees(start, end)}
        self._nodes = _fetch_nodes(conn, keys)

    def __call__(self, start: int, end: int) -> bytes:
        return fold_subtrees([self._nodes[k] for k in perfect_subtrees(start, end)])


class _StoreRead:
    """A read connection whose database errors surface as StoreError, not driver internals."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def __enter__(self) -> Connection:
        try:
            self._conn = self._engine.connect()
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read the Merkle log: {type(e).__name__}") from e
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._conn is not None
        self._conn.close()
        if isinstance(exc, SQLAlchemyError):
            raise StoreError(f"cannot read the Merkle log: {type(exc).__name__}") from exc


def _as_utc(value: datetime) -> datetime:
    # SQLite keeps no zone; the log only ever writes UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
