"""The release history of the differencing guard: every aggregate cell this node released to a
partner under the `exact` regime, per agreement id (all its versions) and dataset, with its
contributors as a compressed (roaring) bitmap and their count.

It lives in the node's own database (tables release_histories and release_cells), so it survives
restarts and replicas on one database share it. A release's cells are written in the transaction
that logs the release (`side_write`, in the Merkle log's transaction, node.answering): an answer
that fails records nothing. Concurrency: the log's writers hold the database's write lock in that
transaction (audit.log: PostgreSQL advisory lock, SQLite's one writer), so `side_write` checks the
new cells again against every cell recorded since `earlier` read the history (ids past its
`horizon`) and raises Conflict RELEASE_HISTORY_CHANGED if one of them now exposes a new cell: two
answers of one partner racing cannot both pass the guard against a history missing the other; the
caller answers again. Histories expire with the agreement: a history's `expires_at` is the latest
valid_until of a version that released into it; an expired history is never read, and writes
delete expired ones (at most once a minute per node).

Reading costs what the size pre-filter leaves: each history's cells are kept here in size order
without their bitmaps (`_Sizes`, brought up to date with the rows added since, by other replicas
too), bisection finds those within k-1 of the new cells' sizes, and only their bitmaps are read,
and kept in a cache by cell id (rows are never changed, and ids never reused).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from pyroaring import BitMap
from sqlalchemy.dialects import postgresql, sqlite

from audit.log import SideWrite
from domain.errors import Conflict
from keys import timefmt
from node import differencing
from node.cache import BoundedCache
from node.differencing import CellSet, Earlier
from node.schema import release_cells, release_histories

_CHUNK = 500
# Bitmaps kept, by their serialised size: a history's small cells are the ones read most.
_CACHED_BYTES = 256 << 20
_CACHED_HISTORIES = 1024
# Expired histories are deleted by a write at most this often (a DELETE per release otherwise).
_PRUNE_EVERY_S = 60.0


@dataclass(frozen=True)
class HistoryKey:
    """Whose history: what one partner received under one agreement (any version) and dataset."""

    partner: str
    agreement_id: str
    dataset: str


@dataclass(frozen=True)
class Snapshot:
    """The earlier cells that can matter to an answer (the size pre-filter's), and the last cell
    id the history held when they were read."""

    earlier: Earlier
    horizon: int


class _Cells:
    """Earlier cells by cell id, up to `budget` bytes of bitmaps (serialised); when full, the
    next insert starts it afresh (as node.cache.BoundedCache)."""

    def __init__(self, budget: int) -> None:
        self._entries: dict[int, CellSet] = {}
        self._bytes, self._budget = 0, budget

    def get(self, cell_id: int) -> CellSet | None:
        return self._entries.get(cell_id)

    def put(self, cell_id: int, cell: CellSet, size: int) -> CellSet:
        if self._bytes + size > self._budget:
            self._entries.clear()
            self._bytes = 0
        self._entries[cell_id] = cell
        self._bytes += size
        return cell


class _Sizes:
    """One history's cells without their bitmaps, in size order, as read up to cell id `last`:
    what the size pre-filter searches. Rows are only ever added (ids in commit order: they are
    inserted in the log's transaction, under its lock), so each read fetches the new ones only."""

    def __init__(self) -> None:
        self.last = 0
        self.sizes: list[int] = []
        self.rows: list[tuple[int, int, int]] = []  # (cell id, records, signature)

    def add(self, rows: Sequence[tuple[int, int, int, int]]) -> None:
        """Add (cell id, size, records, signature) rows read after `last`."""
        for cell_id, size, records, signature in rows:
            at = bisect.bisect_right(self.sizes, int(size))
            self.sizes.insert(at, int(size))
            self.rows.insert(at, (int(cell_id), int(records), int(signature)))
            self.last = max(self.last, int(cell_id))

    def within(self, windows: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        for lo, hi in windows:
            out += self.rows[
                bisect.bisect_left(self.sizes, lo) : bisect.bisect_right(self.sizes, hi)
            ]
        return out


class ReleaseHistory:
    """Reads and writes the release history in the node database `engine`; see the module."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._cells = _Cells(_CACHED_BYTES)
        self._pruned = 0.0
        self._sizes: BoundedCache[int, _Sizes] = BoundedCache(_CACHED_HISTORIES)
        self._lock = threading.Lock()
        self._ids: BoundedCache[HistoryKey, tuple[int, datetime]] = BoundedCache(_CACHED_HISTORIES)

    def earlier(self, key: HistoryKey, sizes: Sequence[int], k: int) -> Snapshot:
        """The cells `key` already released whose sizes are within k-1 of one of `sizes`."""
        c = release_cells.c
        with self._engine.connect() as conn:
            history = self._history(conn, key)
            if history is None:
                return Snapshot(Earlier([]), 0)
            with self._lock:
                index = self._sizes.get(history) or self._sizes.put(history, _Sizes())
                added = conn.execute(
                    sa.select(c.cell_id, c.contributors, c.records, c.signature)
                    .where(c.history_id == history, c.cell_id > index.last)
                    .order_by(c.cell_id)
                )
                index.add([tuple(r) for r in added])
                horizon = index.last
                found = index.within(differencing.size_windows(sizes, k))
            cells = self._read(conn, found)
        return Snapshot(Earlier(cells), horizon)

    def _history(self, conn: sa.Connection, key: HistoryKey) -> int | None:
        """`_history_id`, remembered until the history's expiry as read: a history is deleted
        only once expired (`prune`), and its expiry only ever moves later (`_upsert_history`),
        so an id read with a later expiry stays valid until then. Absent ones are asked again."""
        now = timefmt.now()
        known = self._ids.get(key)
        if known is not None and known[1] > now:
            return known[0]
        found = _history_id(conn, key, now)
        if found is not None:
            self._ids.put(key, found)
        return None if found is None else found[0]

    def _read(self, conn: sa.Connection, found: list[tuple[int, int, int]]) -> list[CellSet]:
        """These cells (id, records, signature): cached, or read with their bitmaps (and
        cached)."""
        have: dict[int, CellSet] = {}
        for cell_id, _, _ in found:
            if (cached := self._cells.get(cell_id)) is not None:
                have[cell_id] = cached
        missing = {cell_id: (r, s) for cell_id, r, s in found if cell_id not in have}
        c = release_cells.c
        ids = list(missing)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            for cell_id, members in conn.execute(
                sa.select(c.cell_id, c.members).where(c.cell_id.in_(chunk))
            ):
                blob = bytes(members)
                cell = CellSet(BitMap.deserialize(blob), *missing[int(cell_id)])
                have[int(cell_id)] = self._cells.put(int(cell_id), cell, len(blob))
        return [have[cell_id] for cell_id, _, _ in found]

    def _since(self, conn: sa.Connection, history: int, horizon: int) -> list[CellSet]:
        """The cells of `history` recorded after cell id `horizon`."""
        c = release_cells.c
        rows = conn.execute(
            sa.select(c.members, c.records, c.signature).where(
                c.history_id == history, c.cell_id > horizon
            )
        )
        return [CellSet(BitMap.deserialize(bytes(m)), int(r), int(s)) for m, r, s in rows]

    def side_write(
        self,
        key: HistoryKey,
        expires_at: datetime,
        request_id: str,
        cells: Sequence[CellSet],
        snapshot: Snapshot,
        k: int,
    ) -> SideWrite:
        """Record `cells` as released under `key`, in the log's transaction: prune what expired
        (at most once a minute), check `cells` against what was recorded since `snapshot`
        (Conflict RELEASE_HISTORY_CHANGED if one is now exposed), then insert them."""
        # Serialised now, so that the log's transaction (and its lock) only inserts them. A cell
        # identical to one the partner already holds is not recorded again: the history would
        # otherwise grow with every repeat of a query, and the guard's cost with it, for nothing
        # (`Earlier.holds`). It is still checked against the cells recorded since, below.
        rows = [
            {
                "request_id": request_id,
                "contributors": c.size,
                "records": c.records,
                "signature": c.signature,
                "members": _serialised(c.members),
            }
            for c in cells
            if not snapshot.earlier.holds(c)
        ]

        def write(conn: sa.Connection, first_index: int) -> None:
            del first_index
            if time.monotonic() - self._pruned > _PRUNE_EVERY_S:
                prune(conn, timefmt.now())
                self._pruned = time.monotonic()
            history = _upsert_history(conn, key, expires_at)
            later = self._since(conn, history, snapshot.horizon)
            if later and differencing.guard(cells, Earlier(later), k):
                raise Conflict(
                    "another answer to this partner was released while this one was checked",
                    reason="RELEASE_HISTORY_CHANGED",
                )
            if rows:
                conn.execute(release_cells.insert(), [{**r, "history_id": history} for r in rows])

        return write

    def record(
        self, key: HistoryKey, expires_at: datetime, request_id: str, cells: Sequence[CellSet]
    ) -> None:
        """Record `cells` in a transaction of their own (tests, tools), unchecked."""
        with self._engine.begin() as conn:
            self.side_write(key, expires_at, request_id, cells, Snapshot(Earlier([]), 2**62), 1)(
                conn, 0
            )

    def prune(self, now: datetime | None = None) -> int:
        """Delete the histories expired at `now` (default: now) with their cells; how many."""
        # A `now` ahead of the clock (tests, tools) deletes histories whose ids are remembered.
        self._ids = BoundedCache(_CACHED_HISTORIES)
        with self._engine.begin() as conn:
            return prune(conn, now or timefmt.now())


def _serialised(members: BitMap) -> bytes:
    compact = BitMap(members)
    compact.run_optimize()
    return bytes(compact.serialize())


def _history_id(conn: sa.Connection, key: HistoryKey, now: datetime) -> tuple[int, datetime] | None:
    """The id and expiry of `key`'s history unexpired at `now`, if there is one."""
    h = release_histories.c
    found = conn.execute(
        sa.select(h.history_id, h.expires_at).where(
            h.partner == key.partner,
            h.agreement_id == key.agreement_id,
            h.dataset == key.dataset,
            h.expires_at > timefmt.to_db(now),
        )
    ).one_or_none()
    return None if found is None else (int(found[0]), timefmt.from_db(found[1]))


def _upsert_history(conn: sa.Connection, key: HistoryKey, expires_at: datetime) -> int:
    """The history's id, created if absent; its expiry moved to `expires_at` if that is later."""
    h = release_histories.c
    until = timefmt.to_db(expires_at)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        insert(release_histories)
        .values(
            partner=key.partner,
            agreement_id=key.agreement_id,
            dataset=key.dataset,
            expires_at=until,
        )
        .on_conflict_do_nothing()
    )
    where = (h.partner == key.partner, h.agreement_id == key.agreement_id, h.dataset == key.dataset)
    conn.execute(
        release_histories.update().where(*where, h.expires_at < until).values(expires_at=until)
    )
    return int(conn.execute(sa.select(h.history_id).where(*where)).scalar_one())


def prune(conn: sa.Connection, now: datetime) -> int:
    """Delete, in `conn`'s transaction, the histories expired at `now` and their cells."""
    expired = sa.select(release_histories.c.history_id).where(
        release_histories.c.expires_at <= timefmt.to_db(now)
    )
    conn.execute(release_cells.delete().where(release_cells.c.history_id.in_(expired)))
    return int(
        conn.execute(
            release_histories.delete().where(release_histories.c.expires_at <= timefmt.to_db(now))
        ).rowcount
    )
