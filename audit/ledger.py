"""What the verifier remembers of the bundles it has read: checkpoints, results, receipts,
cosignatures and the city checkpoints brokers recorded.

Reconciling brokers' receipts with cities' results needs every one of them at the end, so
holding them in Python would make the verifier's memory grow with the bundles. They go instead
into a private temporary SQLite database (SQLite deletes it when the connection closes) whose
page cache is bounded, and the cross-bundle checks are SQL queries over it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_FLUSH = 1024  # rows buffered before one executemany
_CACHE_KIB = 2048  # SQLite page cache: the bound on what the ledger holds in memory

_SCHEMA = """
CREATE TABLE bundles (id INTEGER PRIMARY KEY, path TEXT NOT NULL, origin TEXT NOT NULL,
                      party TEXT NOT NULL, role TEXT NOT NULL);
CREATE TABLE checkpoints (bundle INTEGER NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL,
                          PRIMARY KEY (bundle, size)) WITHOUT ROWID;
-- committed: the city logged the result as a salted commitment, `digest` is that commitment
-- (domain.commitment), and receipts name it as `result_commitment`.
CREATE TABLE results (bundle INTEGER NOT NULL, city TEXT NOT NULL, broker TEXT NOT NULL,
                      request_id TEXT NOT NULL, digest TEXT NOT NULL, idx INTEGER NOT NULL,
                      issued_us INTEGER NOT NULL, committed INTEGER NOT NULL);
CREATE INDEX results_by_place ON results (city, idx);
CREATE TABLE receipts (bundle INTEGER NOT NULL, seq INTEGER NOT NULL, broker TEXT NOT NULL,
                       city TEXT NOT NULL, request_id TEXT NOT NULL, result_digest TEXT NOT NULL,
                       node_log_index INTEGER NOT NULL, issued_us INTEGER NOT NULL,
                       committed INTEGER NOT NULL, PRIMARY KEY (bundle, seq));
CREATE INDEX receipts_by_result ON receipts (bundle, city, result_digest);
CREATE TABLE cosignatures (bundle INTEGER NOT NULL, city TEXT NOT NULL, size INTEGER NOT NULL);
CREATE INDEX cosignatures_by_size ON cosignatures (bundle, city, size);
CREATE TABLE witnessed (bundle INTEGER NOT NULL, idx INTEGER NOT NULL, city TEXT NOT NULL,
                        origin TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL,
                        line TEXT NOT NULL);
-- City checkpoints a broker's log recorded (audit.city_checkpoint): audit.coverage.
CREATE TABLE recorded (bundle INTEGER NOT NULL, idx INTEGER NOT NULL, broker TEXT NOT NULL,
                       city TEXT NOT NULL, origin TEXT NOT NULL, size INTEGER NOT NULL,
                       root BLOB NOT NULL);
CREATE INDEX recorded_by_origin ON recorded (origin, size);
-- Receipt lines of cities the broker stopped waiting for (no result): audit.coverage.
CREATE TABLE undelivered (bundle INTEGER NOT NULL, broker TEXT NOT NULL, city TEXT NOT NULL,
                          request_id TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX undelivered_by_request ON undelivered (bundle, city, request_id);
"""


@dataclass
class ResultRef:
    """A result a city's log holds: released to `broker` at log `index`; `committed` when the
    log holds it as a salted commitment and `digest` is that commitment."""

    city: str
    broker: str
    request_id: str
    digest: str
    index: int
    issued_at: datetime
    committed: bool = False


@dataclass
class ReceiptRef:
    """One city's line in a broker's receipt: the result it got and where the city logged it;
    `committed` when the line names the city's commitment to the result (`result_digest`)."""

    broker: str
    city: str
    request_id: str
    result_digest: str
    node_log_index: int
    issued_at: datetime
    committed: bool = False


@dataclass(frozen=True)
class Witnessed:
    """A broker checkpoint a city logged that it cosigned: at log `index` of that city's log."""

    city: str
    origin: str
    size: int
    root: bytes
    line: str
    index: int


@dataclass(frozen=True)
class Recorded:
    """A city checkpoint a broker logged that it checked: at log `index` of that broker's log."""

    broker: str
    city: str
    origin: str
    size: int
    root: bytes
    index: int


@dataclass(frozen=True)
class Bundle:
    """One bundle the ledger holds, by its row id."""

    id: int
    path: Path
    origin: str
    party: str
    role: str


def _us(at: datetime) -> int:
    return round(at.timestamp() * 1_000_000)


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


class Ledger:
    """The verifier's spill store of what reconciliation needs, in bounded memory."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a private on-disk temporary database
        self._db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.executescript(_SCHEMA)
        self._results: list[tuple[Any, ...]] = []
        self._receipts: list[tuple[Any, ...]] = []
        self._receipt_seq = 0

    def close(self) -> None:
        """Close the database; SQLite deletes its file."""
        self._db.close()

    def add_bundle(self, path: Path, origin: str, party: str, role: str) -> Bundle:
        """Register a bundle; its rows are kept under the returned id."""
        cur = self._db.execute(
            "INSERT INTO bundles (path, origin, party, role) VALUES (?, ?, ?, ?)",
            (str(path), origin, party, role),
        )
        assert cur.lastrowid is not None
        return Bundle(cur.lastrowid, path, origin, party, role)

    def add_checkpoint(self, bundle: Bundle, size: int, root: bytes) -> None:
        """A verified checkpoint of the bundle."""
        self._db.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", (bundle.id, size, root))

    def next_checkpoint(self, bundle: Bundle, after: int) -> tuple[int, bytes] | None:
        """The bundle's smallest checkpoint larger than `after`."""
        row = self._db.execute(
            "SELECT size, root FROM checkpoints WHERE bundle = ? AND size > ? "
            "ORDER BY size LIMIT 1",
            (bundle.id, after),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def root(self, bundle: Bundle, size: int) -> bytes | None:
        """The root of the bundle's checkpoint of this size, if it has one."""
        row = self._db.execute(
            "SELECT root FROM checkpoints WHERE bundle = ? AND size = ?", (bundle.id, size)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def checkpoint_roots(self, bundle: Bundle) -> Iterator[tuple[int, bytes]]:
        """Each verified checkpoint's (size, root), smallest first."""
        for size, root in self._db.execute(
            "SELECT size, root FROM checkpoints WHERE bundle = ? ORDER BY size", (bundle.id,)
        ):
            yield int(size), bytes(root)

    def add_cosignature(self, bundle: Bundle, city: str, size: int) -> None:
        """A (verified) cosignature a broker's bundle carries."""
        self._db.execute("INSERT INTO cosignatures VALUES (?, ?, ?)", (bundle.id, city, size))

    def add_witnessed(self, bundle: Bundle, w: Witnessed) -> None:
        """A cosignature a city's bundle logged."""
        self._db.execute(
            "INSERT INTO witnessed VALUES (?, ?, ?, ?, ?, ?, ?)",
            (bundle.id, w.index, w.city, w.origin, w.size, w.root, w.line),
        )

    def add_recorded(self, bundle: Bundle, r: Recorded) -> None:
        """A city checkpoint a broker's bundle logged (its note verified as the city's)."""
        self._db.execute(
            "INSERT INTO recorded VALUES (?, ?, ?, ?, ?, ?, ?)",
            (bundle.id, r.index, r.broker, r.city, r.origin, r.size, r.root),
        )

    def add_result(self, bundle: Bundle, r: ResultRef) -> None:
        """A verified result a city's bundle logged."""
        self._results.append(
            (
                bundle.id,
                r.city,
                r.broker,
                r.request_id,
                r.digest,
                r.index,
                _us(r.issued_at),
                int(r.committed),
            )
        )
        if len(self._results) >= _FLUSH:
            self._flush()

    def add_receipt(self, bundle: Bundle, r: ReceiptRef) -> None:
        """One verified receipt line a broker's bundle logged."""
        self._receipt_seq += 1
        self._receipts.append(
            (
                bundle.id,
                self._receipt_seq,
                r.broker,
                r.city,
                r.request_id,
                r.result_digest,
                r.node_log_index,
                _us(r.issued_at),
                int(r.committed),
            )
        )
        if len(self._receipts) >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._results:
            self._db.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._results
            )
            self._results.clear()
        if self._receipts:
            self._db.executemany(
                "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._receipts
            )
            self._receipts.clear()

    def results(self, bundle: Bundle) -> Iterator[ResultRef]:
        """The bundle's results, in log order."""
        self._flush()
        for row in self._db.execute(
            "SELECT city, broker, request_id, digest, idx, issued_us, committed FROM results "
            "WHERE bundle = ? ORDER BY idx",
            (bundle.id,),
        ):
            yield _result(row)

    def receipts(self, bundle: Bundle) -> Iterator[ReceiptRef]:
        """The bundle's receipt lines, in log order."""
        self._flush()
        for row in self._db.execute(
            "SELECT broker, city, request_id, result_digest, node_log_index, issued_us, "
            "committed FROM receipts WHERE bundle = ? ORDER BY seq",
            (bundle.id,),
        ):
            yield _receipt(row)

    def bundles(self) -> list[Bundle]:
        """Every bundle registered, in registration order."""
        return [
            Bundle(int(i), Path(p), o, party, role)
            for i, p, o, party, role in self._db.execute(
                "SELECT id, path, origin, party, role FROM bundles ORDER BY id"
            )
        ]

    # -- cross-bundle questions, each answered with the first offender in bundle order ----------

    def fork(self) -> tuple[Bundle, Bundle, int] | None:
        """Two bundles of one log whose checkpoints of one size have different roots."""
        row = self._db.execute(
            "SELECT a.bundle, b.bundle, a.size FROM checkpoints a "
            "JOIN bundles ba ON ba.id = a.bundle "
            "JOIN bundles bb ON bb.origin = ba.origin AND bb.id < ba.id "
            "JOIN checkpoints b ON b.bundle = bb.id AND b.size = a.size AND b.root != a.root "
            "ORDER BY a.bundle, a.size LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        by_id = {b.id: b for b in self.bundles()}
        return by_id[row[0]], by_id[row[1]], int(row[2])

    def receipt_without_result(self, broker: Bundle) -> ReceiptRef | None:
        """A receipt of `broker` naming a result that no bundle of that city's log holds at the
        index named with the digest named, among cities whose logs were given."""
        self._flush()
        row = self._db.execute(
            "SELECT broker, city, request_id, result_digest, node_log_index, issued_us, "
            "committed FROM receipts r WHERE r.bundle = ? "
            "AND r.city IN (SELECT party FROM bundles WHERE role = 'node') "
            "AND NOT EXISTS (SELECT 1 FROM results x WHERE x.city = r.city "
            "AND x.idx = r.node_log_index AND x.digest = r.result_digest "
            "AND x.committed = r.committed) "
            "ORDER BY r.seq LIMIT 1",
            (broker.id,),
        ).fetchone()
        return None if row is None else _receipt(row)

    def result_without_receipt(
        self, broker: Bundle, grace: timedelta
    ) -> tuple[Bundle, ResultRef] | None:
        """A result released to `broker` more than `grace` before its last logged receipt that
        none of its receipts names."""
        self._flush()
        last = self._db.execute(
            "SELECT max(issued_us) FROM receipts WHERE bundle = ?", (broker.id,)
        ).fetchone()[0]
        if last is None:
            return None
        row = self._db.execute(
            "SELECT x.bundle, city, broker, request_id, digest, idx, issued_us, committed "
            "FROM results x JOIN bundles b ON b.id = x.bundle AND b.role = 'node' "
            "WHERE x.broker = ? AND x.issued_us < ? "
            "AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.bundle = ? "
            "AND r.city = x.city AND r.result_digest = x.digest "
            "AND r.committed = x.committed) "
            # Released after the broker stopped waiting: accounted for (undelivered_results).
            "AND NOT EXISTS (SELECT 1 FROM undelivered u WHERE u.bundle = ? "
            "AND u.city = x.city AND u.request_id = x.request_id) "
            "ORDER BY x.bundle, x.idx LIMIT 1",
            (
                broker.party,
                last - round(grace.total_seconds() * 1_000_000),
                broker.id,
                broker.id,
            ),
        ).fetchone()
        if row is None:
            return None
        by_id = {b.id: b for b in self.bundles()}
        return by_id[row[0]], _result(row[1:])

    def witnessed_unmatched(self, broker: Bundle) -> tuple[Bundle, Witnessed, str] | None:
        """A checkpoint of `broker`'s log, no larger than its bundle's log, that a city logged as
        cosigned and the bundle does not show as such: "missing" (no checkpoint of that size),
        "fork" (another root), or "uncosigned" (no cosignature of that size by that city in the
        bundle: any one will do, since a city that is asked again cosigns the same checkpoint
        again, with another timestamp)."""
        row = self._db.execute(
            "SELECT w.bundle, w.city, w.origin, w.size, w.root, w.line, w.idx, c.root, "
            "EXISTS (SELECT 1 FROM cosignatures k WHERE k.bundle = ? AND k.city = w.city "
            "AND k.size = w.size) "
            "FROM witnessed w LEFT JOIN checkpoints c ON c.bundle = ? AND c.size = w.size "
            "WHERE w.origin = ? "
            "AND w.size <= (SELECT max(size) FROM checkpoints WHERE bundle = ?) "
            "AND (c.root IS NULL OR c.root != w.root OR NOT EXISTS (SELECT 1 FROM cosignatures "
            "k WHERE k.bundle = ? AND k.city = w.city AND k.size = w.size)) "
            "ORDER BY w.bundle, w.idx LIMIT 1",
            (broker.id, broker.id, broker.origin, broker.id, broker.id),
        ).fetchone()
        if row is None:
            return None
        node, city, origin, size, root, line, idx, broker_root, cosigned = row
        w = Witnessed(city, origin, int(size), bytes(root), line, int(idx))
        problem = "missing" if broker_root is None else "fork" if broker_root != root else ""
        by_id = {b.id: b for b in self.bundles()}
        return by_id[node], w, problem or ("uncosigned" if not cosigned else "")

    def recorded_unmatched(self, node: Bundle) -> tuple[Bundle, Recorded, str] | None:
        """A checkpoint of `node`'s log, no larger than its bundle's log, that a broker logged it
        recorded and the bundle does not hold: "missing" (no checkpoint of that size; a log's
        bundle holds every checkpoint it signed) or "fork" (another root)."""
        row = self._db.execute(
            "SELECT r.bundle, r.broker, r.city, r.origin, r.size, r.root, r.idx, c.root "
            "FROM recorded r LEFT JOIN checkpoints c ON c.bundle = ? AND c.size = r.size "
            "WHERE r.origin = ? "
            "AND r.size <= (SELECT max(size) FROM checkpoints WHERE bundle = ?) "
            "AND (c.root IS NULL OR c.root != r.root) "
            "ORDER BY r.bundle, r.idx LIMIT 1",
            (node.id, node.origin, node.id),
        ).fetchone()
        if row is None:
            return None
        broker, party, city, origin, size, root, idx, node_root = row
        r = Recorded(party, city, origin, int(size), bytes(root), int(idx))
        return self._bundle(int(broker)), r, "missing" if node_root is None else "fork"

    # -- extents and absences (audit.coverage) --------------------------------------------------

    def add_undelivered(
        self, bundle: Bundle, broker: str, city: str, request_id: str, status: str
    ) -> None:
        """A broker receipt's line for a city it got no result from (it stopped waiting)."""
        self._db.execute(
            "INSERT INTO undelivered VALUES (?, ?, ?, ?, ?)",
            (bundle.id, broker, city, request_id, status),
        )

    def extent(self, bundle: Bundle) -> int:
        """The size of the bundle's newest verified checkpoint (0 if it has none)."""
        row = self._db.execute(
            "SELECT max(size) FROM checkpoints WHERE bundle = ?", (bundle.id,)
        ).fetchone()
        return int(row[0] or 0)

    def cosigners(self, bundle: Bundle, size: int) -> list[str]:
        """The cities whose cosignature of the bundle's checkpoint of `size` it carries."""
        return [
            str(c)
            for (c,) in self._db.execute(
                "SELECT DISTINCT city FROM cosignatures WHERE bundle = ? AND size = ? "
                "ORDER BY city",
                (bundle.id, size),
            )
        ]

    def largest_witnessed(self, origin: str) -> tuple[Bundle, int, int] | None:
        """The largest size of log `origin` a city logged that it cosigned: (that city's bundle,
        size, its entry index)."""
        return self._largest("witnessed", origin)

    def largest_recorded(self, origin: str) -> tuple[Bundle, int, int] | None:
        """The largest size of log `origin` a broker logged that it recorded: (that broker's
        bundle, size, its entry index)."""
        return self._largest("recorded", origin)

    def _largest(self, table: str, origin: str) -> tuple[Bundle, int, int] | None:
        row = self._db.execute(
            f"SELECT bundle, size, idx FROM {table} WHERE origin = ? "  # a fixed table name
            "ORDER BY size DESC, bundle, idx LIMIT 1",
            (origin,),
        ).fetchone()
        if row is None:
            return None
        return self._bundle(int(row[0])), int(row[1]), int(row[2])

    def largest_referenced(self, city: str) -> tuple[Bundle, int] | None:
        """The largest index of `city`'s log a broker's receipt names as holding a result:
        (the broker's bundle, that index)."""
        self._flush()
        row = self._db.execute(
            "SELECT bundle, node_log_index FROM receipts WHERE city = ? "
            "ORDER BY node_log_index DESC, bundle LIMIT 1",
            (city,),
        ).fetchone()
        return None if row is None else (self._bundle(int(row[0])), int(row[1]))

    def undelivered_results(self) -> Iterator[tuple[Bundle, ResultRef, Bundle, str]]:
        """Results a city logged in exchanges whose receipt says the broker stopped waiting for
        that city: (city's bundle, result, broker's bundle, the receipt's status), once per result."""
        self._flush()
        rows = self._db.execute(
            "SELECT x.bundle, x.city, x.broker, x.request_id, x.digest, x.idx, x.issued_us, "
            "x.committed, u.bundle, u.status FROM results x "
            "JOIN bundles b ON b.id = x.bundle AND b.role = 'node' "
            "JOIN undelivered u ON u.city = x.city AND u.request_id = x.request_id "
            "JOIN bundles bb ON bb.id = u.bundle AND bb.party = x.broker "
            "ORDER BY x.city, x.idx, x.bundle, u.bundle"
        ).fetchall()
        seen: set[tuple[str, int]] = set()
        for row in rows:
            result = _result(row[1:8])
            if (result.city, result.index) in seen:
                continue
            seen.add((result.city, result.index))
            yield self._bundle(int(row[0])), result, self._bundle(int(row[8])), str(row[9])

    def _bundle(self, bundle_id: int) -> Bundle:
        i, p, o, party, role = self._db.execute(
            "SELECT id, path, origin, party, role FROM bundles WHERE id = ?", (bundle_id,)
        ).fetchone()
        return Bundle(int(i), Path(p), o, party, role)


def _result(row: Any) -> ResultRef:
    city, broker, request_id, digest, idx, us, committed = row
    return ResultRef(city, broker, request_id, digest, int(idx), _at(int(us)), bool(committed))


def _receipt(row: Any) -> ReceiptRef:
    broker, city, request_id, digest, index, us, committed = row
    return ReceiptRef(broker, city, request_id, digest, int(index), _at(int(us)), bool(committed))
