"""Durable Merkle log appends on SQLite, against raw SQL inserts on the same engine in the same run.

    make bench-log                   # or: .venv/bin/python bench/log_append.py
    .venv/bin/python bench/log_append.py --quick                 # a smoke run of about 20 s
    .venv/bin/python bench/log_append.py --threads 1,4,16,64 --duration 4 --sustained 30

What runs, for each level of N appender threads: a fresh SQLite file made as the product makes it
(infra.storage.create_engine: WAL, synchronous=FULL; infra.storage.upgrade: the Alembic
migrations), an audit.log.MerkleLog on it, and N threads that each call `log.append(entry,
"consent")` in a loop for --warmup + --duration seconds. `append` returns only once the entry, its
tree nodes and a signed checkpoint are committed (fsync'd), and concurrent appends are
group-committed by the log's writer thread. Entries are real signed DSSE envelopes (consent
receipts, about 650 bytes, made with keys.dsse.sign before timing; a pool of distinct envelopes is
cycled). Counted: appends that returned inside the timed window; latency is the time of each
`append` call; the batch size is entries / checkpoints committed inside the window.

Baselines on the same engine (same file, same pragmas), right after each level:
- raw_sql_batched (the figures' baseline): one thread inserting the same rows (the log_entries
  columns: idx, entry, leaf_hash, kind, created_at, precomputed) into a plain table with plain
  SQLAlchemy Core `conn.execute(insert(table), rows)`, one transaction commit per batch of B rows,
  B = the mean batch the log achieved at that level (rounded, at least 1). Its "latency" is the
  time of one transaction (begin to commit returned).
- raw_sql_per_row: N threads, each committing one row per transaction (what N request handlers
  writing their own row would do without group commit); also reported, as a second comparison.

Then a sustained run (--sustained seconds at the largest thread count, on a fresh file; baseline
raw_sql_batched for at most 10 s, since it writes several times faster) is checked against the
issue's goal of 5,000 entries/s, with its slowest and fastest whole second.

Output: tables, bench/results/<name>.json (the shared figure format, see bench/common.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import (
    RESULTS_DIR,
    Figure,
    environment,
    figures_table,
    fmt_number,
    measured_source,
    process_cpu_s,
    terminate_on_sigterm,
    write_figures,
)
from rich.console import Console
from rich.table import Table

from audit.log import MerkleLog
from audit.schema import log_checkpoints, log_entries
from infra import storage
from keys import dsse, timefmt
from keys.ed25519 import Signer

NAME = "log_append"
GOAL_ENTRIES_PER_S = 5000.0
ORIGIN = "citybroker/node/aurora"
KIND = "consent"
LOG, BATCHED, PER_ROW = "log", "raw_sql_batched", "raw_sql_per_row"
# The raw baseline of the sustained run writes several times the log's rate: cap its window so
# the file stays around a gigabyte at most.
SUSTAINED_BASELINE_S = 10.0

raw_metadata = sa.MetaData()
# The same columns as log_entries, in a plain table nothing else touches.
raw_entries = sa.Table(
    "bench_raw_entries",
    raw_metadata,
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary, nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# -- entries --------------------------------------------------------------------------------------


def make_entries(n: int, city: Signer) -> list[bytes]:
    """`n` distinct signed consent receipts, as a node logs them."""
    base = timefmt.now() - timedelta(hours=1)
    out = []
    for i in range(n):
        at = timefmt.fmt(base + timedelta(seconds=i))
        env = dsse.sign(
            "consent-receipt",
            {
                "city": "aurora",
                "record_id": f"cr-{i:09d}",
                "resident_id": f"res-{(i * 7919) % 1_000_003:07d}",
                "purpose": "urban-mobility-planning",
                "recipient": "northwind-mobility",
                "data_category": "mobility",
                "valid_from": at,
                "valid_until": None,
                "event": "given" if i % 9 else "withdrawn",
                "actor": "city-portal",
                "at": at,
            },
            city,
        )
        out.append(env.to_json())
    return out


# -- measurement ----------------------------------------------------------------------------------


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


@dataclass
class Run:
    """One timed window of one writer setup."""

    what: str
    threads: int
    duration_s: float
    completed: int
    errors: int
    latencies_ms: list[float] = field(repr=False)
    ends: list[float] = field(repr=False, default_factory=list)
    batch: float = 1.0  # mean entries per commit
    commits: int = 0
    cpu_s: float = 0.0
    first_error: str = ""
    window_start: float = 0.0  # perf_counter time the timed window opened

    def __post_init__(self) -> None:
        self.latencies_ms.sort()

    @property
    def throughput(self) -> float:
        return self.completed / self.duration_s

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    @property
    def cpu_ms_per_1000(self) -> float:
        return 1e6 * self.cpu_s / self.completed if self.completed else 0.0

    def per_second(self, window_start: float) -> list[int]:
        """Completions in each whole second of the window."""
        buckets = [0] * max(1, int(self.duration_s))
        for t in self.ends:
            i = int(t - window_start)
            if 0 <= i < len(buckets):
                buckets[i] += 1
        return buckets


def timed_threads(
    threads: int,
    warmup_s: float,
    duration_s: float,
    work: Callable[[int], None],
    on_window: Callable[[str], None] | None = None,
) -> tuple[list[float], list[float], list[str], float, float]:
    """Run `work(thread_index)` in a loop in `threads` threads until the window ends.

    Returns the latencies (ms) and end times of the calls that ended inside the window, the
    errors, the window start and the process CPU seconds used inside the window.
    """
    barrier = threading.Barrier(threads + 1)
    window = [0.0, 0.0]
    lat: list[list[float]] = [[] for _ in range(threads)]
    ends: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def loop(i: int) -> None:
        barrier.wait()
        mine_l, mine_e = lat[i], ends[i]
        start, end = window
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                work(i)
            except Exception as e:  # counted and shown, never silently dropped
                errors.append(f"{type(e).__name__}: {e}")
                continue
            t1 = time.perf_counter()
            if start <= t1 <= end:
                mine_l.append((t1 - t0) * 1000)
                mine_e.append(t1)

    pool = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    now = time.perf_counter()
    window[:] = [now + warmup_s, now + warmup_s + duration_s]
    barrier.wait()
    time.sleep(max(0.0, window[0] - time.perf_counter()))
    if on_window:
        on_window("start")
    cpu0 = process_cpu_s(os.getpid())
    time.sleep(max(0.0, window[1] - time.perf_counter()))
    cpu1 = process_cpu_s(os.getpid())
    if on_window:
        on_window("end")
    for t in pool:
        t.join()
    return (
        [x for xs in lat for x in xs],
        [x for xs in ends for x in xs],
        errors,
        window[0],
        cpu1 - cpu0,
    )


class Database:
    """A fresh SQLite file made like the product's, with the log tables and the raw table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = storage.create_engine(f"sqlite:///{path}")
        storage.upgrade(self.engine)
        raw_metadata.create_all(self.engine)
        with self.engine.connect() as conn:
            self.pragmas = {
                p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "synchronous")
            }
        # synchronous: 2 = FULL (a commit fsyncs the WAL before it returns).
        if self.pragmas != {"journal_mode": "wal", "synchronous": 2}:
            raise RuntimeError(f"unexpected SQLite durability settings: {self.pragmas}")

    def counts(self) -> tuple[int, int]:
        """(log entries, checkpoints) committed so far."""
        with self.engine.connect() as conn:
            size = conn.execute(sa.select(sa.func.max(log_entries.c.idx))).scalar()
            cps = conn.execute(sa.select(sa.func.count()).select_from(log_checkpoints)).scalar()
        return (0 if size is None else int(size) + 1), int(cps or 0)

    def close(self) -> None:
        self.engine.dispose()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def run_log(
    db: Database,
    signer: Signer,
    entries: list[bytes],
    threads: int,
    warmup_s: float,
    duration_s: float,
) -> Run:
    log = MerkleLog(db.engine, ORIGIN, signer)
    marks: dict[str, tuple[int, int]] = {}
    counters = [i * 7919 for i in range(threads)]
    n = len(entries)

    def work(i: int) -> None:
        c = counters[i]
        counters[i] = c + 1
        log.append(entries[c % n], KIND)

    try:
        lat, ends, errors, start, cpu = timed_threads(
            threads, warmup_s, duration_s, work, lambda m: marks.__setitem__(m, db.counts())
        )
    finally:
        log.close()
    (s0, c0), (s1, c1) = marks["start"], marks["end"]
    return Run(
        LOG,
        threads,
        duration_s,
        len(lat),
        len(errors),
        lat,
        ends,
        batch=(s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"),
        commits=c1 - c0,
        cpu_s=cpu,
        first_error=errors[0] if errors else "",
        window_start=start,
    )


class _RowSource:
    """Rows for raw_entries from the same entries, with precomputed leaf hashes; unique indexes."""

    def __init__(self, db: Database, entries: list[bytes]) -> None:
        self.entries = entries
        self.hashes = [hashlib.sha256(b"\x00" + e).digest() for e in entries]
        with db.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(raw_entries.c.idx))).scalar()
        self.next = 0 if last is None else int(last) + 1
        self.lock = threading.Lock()

    def take(self, k: int) -> list[dict[str, Any]]:
        with self.lock:
            first = self.next
            self.next += k
        n, now = len(self.entries), datetime.now(UTC)
        return [
            {
                "idx": i,
                "entry": self.entries[i % n],
                "leaf_hash": self.hashes[i % n],
                "kind": KIND,
                "created_at": now,
            }
            for i in range(first, first + k)
        ]


def run_raw_batched(
    db: Database, entries: list[bytes], batch: int, warmup_s: float, duration_s: float
) -> Run:
    rows = _RowSource(db, entries)
    stmt = sa.insert(raw_entries)

    def work(_: int) -> None:
        batch_rows = rows.take(batch)
        with db.engine.begin() as conn:
            conn.execute(stmt, batch_rows)

    lat, ends, errors, start, cpu = timed_threads(1, warmup_s, duration_s, work)
    return Run(
        BATCHED,
        1,
        duration_s,
        len(lat) * batch,  # each call commits `batch` rows
        len(errors),
        lat,
        [t for t in ends for _ in range(batch)],
        batch=float(batch),
        commits=len(lat),
        cpu_s=cpu,
        first_error=errors[0] if errors else "",
        window_start=start,
    )


def run_raw_per_row(
    db: Database, entries: list[bytes], threads: int, warmup_s: float, duration_s: float
) -> Run:
    rows = _RowSource(db, entries)
    stmt = sa.insert(raw_entries)

    def work(_: int) -> None:
        row = rows.take(1)
        with db.engine.begin() as conn:
            conn.execute(stmt, row)

    lat, ends, errors, start, cpu = timed_threads(threads, warmup_s, duration_s, work)
    return Run(
        PER_ROW,
        threads,
        duration_s,
        len(lat),
        len(errors),
        lat,
        ends,
        batch=1.0,
        commits=len(lat),
        cpu_s=cpu,
        first_error=errors[0] if errors else "",
        window_start=start,
    )


# -- main ----------------------------------------------------------------------------------------


@dataclass
class Level:
    threads: int
    log: Run
    batched: Run
    per_row: Run | None
    db_bytes: int


def measure_level(
    work: Path,
    signer: Signer,
    entries: list[bytes],
    threads: int,
    warmup_s: float,
    duration_s: float,
    per_row: bool,
    console: Console,
    label: str = "",
    baseline_s: float | None = None,
) -> tuple[Level, dict[str, Any]]:
    db = Database(work / f"log-{label or threads}.db")
    try:
        with console.status(f"MerkleLog, {threads} appender threads{label and ', ' + label}"):
            log_run = run_log(db, signer, entries, threads, warmup_s, duration_s)
        batch = max(1, round(log_run.batch))
        with console.status(f"raw SQL, batches of {batch} rows, one thread"):
            batched = run_raw_batched(db, entries, batch, warmup_s, baseline_s or duration_s)
        pr = None
        if per_row:
            with console.status(f"raw SQL, one row per commit, {threads} threads"):
                pr = run_raw_per_row(db, entries, threads, warmup_s, duration_s)
        size = sum(
            Path(f"{db.path}{s}").stat().st_size
            for s in ("", "-wal")
            if Path(f"{db.path}{s}").exists()
        )
        pragmas = db.pragmas
    finally:
        db.close()
    level = Level(threads, log_run, batched, pr, size)
    for run in (log_run, batched, pr):
        if run is None:
            continue
        note = f" [red]{run.errors} errors: {run.first_error}[/]" if run.errors else ""
        console.print(
            f"  {label + ' ' if label else ''}{run.what:<16} threads={run.threads:<3} "
            f"{run.throughput:9.0f} entries/s  batch {run.batch:6.1f}  p50 {run.p50:7.2f} ms  "
            f"p99 {run.p99:7.2f} ms{note}"
        )
    return level, pragmas


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--threads", default="1,4,16,64", help="appender thread counts (default 1,4,16,64)"
    )
    p.add_argument("--duration", type=float, default=4.0, help="timed seconds per level")
    p.add_argument("--warmup", type=float, default=1.0, help="untimed seconds before each window")
    p.add_argument(
        "--sustained", type=float, default=30.0, help="seconds of the sustained run (0: skip)"
    )
    p.add_argument("--pool", type=int, default=8192, help="distinct signed entries to cycle")
    p.add_argument(
        "--no-per-row", action="store_true", help="skip the per-row-commit raw SQL baseline"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: threads 1,16,64, 1.5 s per level, 5 s sustained",
    )
    p.add_argument("--name", default=NAME, help="result file name under --results")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where results go")
    p.add_argument("--dir", type=Path, help="directory for the SQLite files (default: temp)")
    args = p.parse_args(argv)
    if args.quick:
        args.threads, args.duration, args.warmup, args.sustained = "1,16,64", 1.5, 0.5, 5.0
        args.pool = 2048
    args.levels = sorted({int(c) for c in args.threads.split(",") if c.strip()})
    if not args.levels or min(args.levels) < 1 or args.duration <= 0 or args.pool < 1:
        p.error("--threads needs positive integers, --duration and --pool positive values")
    return args


def level_figures(lv: Level, params: dict[str, Any], prefix: str) -> list[Figure]:
    r, b = lv.log, lv.batched
    p = {
        **params,
        "threads": lv.threads,
        "duration_s": r.duration_s,
        "completed": r.completed,
        "errors": r.errors,
        "log_mean_batch": round(r.batch, 2),
        "log_commits": r.commits,
        "baseline_batch": int(b.batch),
        "baseline_duration_s": b.duration_s,
        "baseline_completed": b.completed,
        "baseline_errors": b.errors,
        "log_cpu_ms_per_1000_entries": round(r.cpu_ms_per_1000, 1),
        "baseline_cpu_ms_per_1000_entries": round(b.cpu_ms_per_1000, 1),
        "database_bytes_after": lv.db_bytes,
    }
    c = f"c{lv.threads}"
    out = [
        Figure(
            f"{prefix}.throughput.{c}",
            r.throughput,
            "entries/s",
            True,
            b.throughput,
            f"{NAME}.{BATCHED}.throughput.b{int(b.batch)}",
            p,
        ),
        Figure(
            f"{prefix}.latency_p50.{c}",
            r.p50,
            "ms",
            False,
            b.p50,
            f"{NAME}.{BATCHED}.commit_time_p50.b{int(b.batch)}",
            p,
        ),
        Figure(
            f"{prefix}.latency_p99.{c}",
            r.p99,
            "ms",
            False,
            b.p99,
            f"{NAME}.{BATCHED}.commit_time_p99.b{int(b.batch)}",
            p,
        ),
    ]
    if lv.per_row is not None:
        pr = lv.per_row
        out.append(
            Figure(
                f"{prefix}.throughput_vs_per_row_commits.{c}",
                r.throughput,
                "entries/s",
                True,
                pr.throughput,
                f"{NAME}.{PER_ROW}.throughput.{c}",
                {
                    **p,
                    "baseline": f"{lv.threads} threads, each committing one row per transaction",
                    "baseline_completed": pr.completed,
                    "baseline_errors": pr.errors,
                    "baseline_latency_p50_ms": round(pr.p50, 3),
                    "baseline_latency_p99_ms": round(pr.p99, 3),
                },
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    terminate_on_sigterm()
    made = args.dir is None
    work = args.dir or Path(tempfile.mkdtemp(prefix="citybroker-bench-log-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    signer = Signer.generate()
    with console.status(f"signing {args.pool} consent receipts"):
        entries = make_entries(args.pool, signer)
    mean_bytes = sum(map(len, entries)) / len(entries)
    console.print(
        f"SQLite files in [bold]{work}[/]; {len(entries)} signed entries of {mean_bytes:.0f} bytes "
        f"on average; levels {args.levels}, {args.warmup:g} s warm-up + {args.duration:g} s each"
    )
    levels: list[Level] = []
    sustained: Level | None = None
    pragmas: dict[str, Any] = {}
    try:
        for n in args.levels:
            lv, pragmas = measure_level(
                work, signer, entries, n, args.warmup, args.duration, not args.no_per_row, console
            )
            levels.append(lv)
        if args.sustained > 0:
            sustained, _ = measure_level(
                work,
                signer,
                entries,
                max(args.levels),
                args.warmup,
                args.sustained,
                False,
                console,
                label="sustained",
                baseline_s=min(args.sustained, SUSTAINED_BASELINE_S),
            )
    finally:
        if made:
            shutil.rmtree(work, ignore_errors=True)

    params: dict[str, Any] = {
        "benchmark": NAME,
        "database": "SQLite file via infra.storage.create_engine + upgrade (Alembic)",
        "sqlite_pragmas": pragmas,
        "durability": "append returns after its batch (entries, nodes, signed checkpoint) is "
        "committed with synchronous=FULL under WAL (fsync of the WAL per commit)",
        "entry": "DSSE consent receipt signed with keys.dsse.sign (Ed25519), kind 'consent'",
        "mean_entry_bytes": round(mean_bytes, 1),
        "distinct_entries": len(entries),
        "baseline": (
            "raw_sql_batched: plain SQLAlchemy Core insert of the same rows (log_entries columns, "
            "leaf hash precomputed) into a plain table on the same engine, one thread, one commit "
            "per batch of round(log mean batch) rows; its latency is one transaction's time"
        ),
        "warmup_s": args.warmup,
        "load_average_before": [round(x, 2) for x in load_before],
        "sqlite_version": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
        "measured": measured_source("audit/log.py"),
        **environment(),
    }
    figs: list[Figure] = []
    for lv in levels:
        figs.extend(level_figures(lv, params, NAME))

    t = Table(title="MerkleLog appends against raw SQL inserts on the same engine (same run)")
    for col in (
        "threads",
        "log entries/s",
        "log batch",
        "log p50 ms",
        "log p99 ms",
        "raw batched entries/s\n(same batch, 1 thread)",
        "ratio",
        "raw commit p50 | p99 ms",
        "raw per-row entries/s\n(N threads)",
        "ratio",
        "log CPU ms\n/1000 entries",
    ):
        t.add_column(col, justify="right")
    for lv in [*levels, *([sustained] if sustained else [])]:
        r, b, pr = lv.log, lv.batched, lv.per_row
        t.add_row(
            f"{lv.threads}" + (" (sustained)" if lv is sustained else ""),
            fmt_number(r.throughput, 0),
            fmt_number(r.batch),
            fmt_number(r.p50, 2),
            fmt_number(r.p99, 2),
            fmt_number(b.throughput, 0),
            fmt_number(r.throughput / b.throughput if b.throughput else None, 3),
            f"{b.p50:.2f} | {b.p99:.2f}",
            fmt_number(pr.throughput, 0) if pr else "-",
            fmt_number(r.throughput / pr.throughput if pr and pr.throughput else None, 2),
            fmt_number(r.cpu_ms_per_1000, 0),
        )
    console.print(t)

    verdict = ""
    if sustained is not None:
        r = sustained.log
        seconds = r.per_second(r.window_start)
        extra = {
            "sustained": True,
            "per_second_min": min(seconds),
            "per_second_max": max(seconds),
            "goal_entries_per_s": GOAL_ENTRIES_PER_S,
            "meets_goal": r.throughput >= GOAL_ENTRIES_PER_S,
        }
        sfigs = level_figures(sustained, {**params, **extra}, f"{NAME}.sustained")
        sfigs.append(
            Figure(
                f"{NAME}.sustained.goal_ratio.c{sustained.threads}",
                r.throughput / GOAL_ENTRIES_PER_S,
                "ratio",
                True,
                1.0,
                f"{NAME}.goal (the issue's {GOAL_ENTRIES_PER_S:,.0f} entries/s; not a measurement)",
                {**params, **extra, "threads": sustained.threads, "duration_s": r.duration_s},
            )
        )
        figs.extend(sfigs)
        ok = r.throughput >= GOAL_ENTRIES_PER_S
        verdict = (
            f"Sustained {r.duration_s:g} s at {sustained.threads} threads: [bold]"
            f"{r.throughput:,.0f}[/] entries/s (slowest second {min(seconds):,}, fastest "
            f"{max(seconds):,}; p50 {r.p50:.2f} ms, p99 {r.p99:.2f} ms), "
            + ("[green]meets[/]" if ok else "[red]misses[/]")
            + f" the goal of {GOAL_ENTRIES_PER_S:,.0f} entries/s; raw SQL in batches of "
            f"{int(sustained.batched.batch)}: {sustained.batched.throughput:,.0f} entries/s."
        )
    console.print(
        figures_table(
            "Figures (baseline: raw SQL, same batch size, one thread)",
            [f for f in figs if ".throughput" in f.name or ".goal" in f.name],
        )
    )
    if verdict:
        console.print(verdict)
    if load_before[0] > 1.0:
        # Only the load before the run says something: the benchmark itself keeps cores busy.
        console.print(
            f"[yellow]Note: load average {load_before[0]:.2f} when the run started: other work "
            "on this machine may have disturbed the figures.[/]"
        )
    out = write_figures(args.results / f"{args.name}.json", figs)
    console.print(f"Wrote {out} in {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
