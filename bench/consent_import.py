"""Bulk consent import: 1,000,000 consent events from CSV into a fresh SQLite node database.

    make bench-consent                  # or: .venv/bin/python bench/consent_import.py
    .venv/bin/python bench/consent_import.py --quick            # 50,000 events, a smoke run

What runs:
1. A CSV of --events consent events is generated, streamed to a temp file: 90 % `given` (1-2
   purposes, 1-2 recipients, 1-3 data categories, so about 2.3 scope rows per record; random
   residents, notices, languages, validity), 6 % `withdrawn` and 4 % `renewed` of records given up
   to 50,000 rows earlier (so most in earlier batches, some in the same one). Every row is valid.
   Records come in the order they were given, their ids growing with it, as a portal's export
   has them (sequence numbers, UUIDv7, ULIDs); --random-ids gives UUIDv4-like ids in no order
   instead, which makes the database's index maintenance (for the import and the baseline alike)
   the larger cost.
2. The import, timed: `node.consent_import.import_file` (what `citybroker node consent import`
   calls) with a sandbox federation's node config, into a node database that does not exist yet,
   in a child process (so its peak RSS, VmHWM, is its own: ru_maxrss would count the pages of
   this process that the child had between fork and exec). It migrates the database, checks
   recipients against the trust bundle, parses and builds every event's rows and receipt payload
   in its worker processes, writes records, scopes and events (each with what its payload is
   rebuilt from) one transaction per batch, signs one statement per batch listing the payloads'
   digests (DSSE, Ed25519) and appends it to the node's Merkle log. Rate = rows / wall time of the whole call.
3. The baseline, in the same run and a child process of its own: plain SQLAlchemy Core
   executemany of the same rows into the same schema on the same engine type (a fresh SQLite
   file made by infra.storage: WAL, synchronous=FULL, the Alembic migrations): records,
   scopes and events (an empty receipt), state updates for withdrawn/renewed, one transaction
   per batch of the same size; no validation, receipts or log. Its rate counts only the time
   inside executemany and commit (row building from the CSV excluded), so it is the fastest the
   same rows go into that schema through SQLAlchemy.
4. What limits the import: CPU seconds of the importing process and of its workers, the
   machine's busy CPU over the import window (other load shows as the difference), and the
   Ed25519 signing rate of one core on this machine.

Goals (from the issue): at least 20,000 events/s, peak memory under 300 MB.
Output: tables and bench/results/consent_import.json (the shared Figure format, bench/common.py).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PROJECT_ROOT,
    RESULTS_DIR,
    Figure,
    environment,
    figures_table,
    fmt_number,
    machine_busy_cpu_s,
    status_kb,
    write_figures,
)
from rich.console import Console
from rich.table import Table

NAME = "consent_import"
GOAL_EVENTS_PER_S = 20_000.0
GOAL_PEAK_MB = 300.0
HEADER = (
    "event",
    "record_id",
    "resident_id",
    "purposes",
    "recipients",
    "data_categories",
    "valid_from",
    "valid_until",
    "lawful_basis",
    "notice_url",
    "notice_hash",
    "language",
    "jurisdiction",
    "retention_days",
    "collection_method",
    "withdrawal_method",
    "actor",
)
PURPOSES = ("urban-mobility-planning", "public-benefit-statistics", "scientific-research")
CATEGORIES = ("mobility", "location", "age", "residence", "energy-usage")
WINDOW = 50_000  # how far back a withdrawal or renewal reaches


# -- the input ------------------------------------------------------------------------------------


def generate(
    path: Path, events: int, partner: str, seed: int = 7, random_ids: bool = False
) -> dict[str, int]:
    """Write the CSV, streaming; returns the counts of each event. Records come in the order
    they were given, with ids that grow with it (a portal's export: sequence numbers, UUIDv7 or
    ULIDs), unless `random_ids` (UUIDv4-like ids, in no order)."""
    rng = random.Random(seed)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    notices = [
        (f"https://aurora.example/privacy/v{v}", "sha256:" + hashlib.sha256(bytes([v])).hexdigest())
        for v in range(1, 5)
    ]
    given_ids: list[str] = []
    state = bytearray()  # per given record: 0 given, 1 renewed, 2 withdrawn
    counts = {"given": 0, "withdrawn": 0, "renewed": 0}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for _ in range(events):
            roll = rng.random()
            if given_ids and roll < 0.10:
                j = rng.randrange(max(0, len(given_ids) - WINDOW), len(given_ids))
                if state[j] == 0 or (state[j] == 1 and roll < 0.06):
                    if roll < 0.06:
                        state[j] = 2
                        w.writerow(["withdrawn", given_ids[j], *[""] * 14, "resident via portal"])
                        counts["withdrawn"] += 1
                    else:
                        state[j] = 1
                        until = base + timedelta(days=730 + rng.randrange(365))
                        row = ["renewed", given_ids[j], "", "", "", "", "", _ts(until)]
                        w.writerow([*row, *[""] * 9])
                        counts["renewed"] += 1
                    continue
            n = len(given_ids)
            rid = f"aurora-c-{rng.getrandbits(64):016x}" if random_ids else f"aurora-c-{n:09d}"
            given_ids.append(rid)
            state.append(0)
            valid_from = base + timedelta(seconds=30 * n + rng.randrange(30))
            until = (
                valid_from + timedelta(days=rng.choice((365, 730))) if rng.random() < 0.7 else None
            )
            url, digest = rng.choice(notices)
            w.writerow(
                [
                    "given",
                    rid,
                    f"aurora-r{rng.randrange(400_000):07d}",
                    ";".join(rng.sample(PURPOSES, 1 if rng.random() < 0.8 else 2)),
                    partner if rng.random() < 0.85 else f"{partner};category:public-authority",
                    ";".join(rng.sample(CATEGORIES, rng.choice((1, 1, 1, 1, 2, 2, 2, 3, 3, 3)))),
                    _ts(valid_from),
                    _ts(until) if until else "",
                    "consent",
                    url,
                    digest,
                    rng.choice(("fi", "sv", "en")),
                    "EU-FI",
                    rng.choice((365, 730)),
                    rng.choice(("web-form", "kiosk", "mobile-app")),
                    "portal",
                    "",
                ]
            )
            counts["given"] += 1
    return counts


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- children: the import, and the baseline -------------------------------------------------------


class MemorySampler:
    """Peak memory of this process's children (the import's worker processes) and of all of them
    together, sampled from /proc twice a second. (ru_maxrss of children is no use here: a child
    started by fork and exec shows the parent's pages for a moment, before the exec.)"""

    def __init__(self) -> None:
        import threading

        self.worker_peak_kb = 0
        self.total_peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.5):
            total = status_kb(me, "VmRSS")
            for pid in _children(me):
                total += status_kb(pid, "VmRSS")
                self.worker_peak_kb = max(self.worker_peak_kb, status_kb(pid, "VmHWM"))
            self.total_peak_kb = max(self.total_peak_kb, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def child_import(config: Path, events: Path, batch_size: int, out: Path) -> None:
    """Run in a child process: the CLI's import function; writes timings and rusage to `out`."""
    from node.consent_import import ImportLimits, default_workers, import_file

    sampler = MemorySampler()
    busy0, t0 = machine_busy_cpu_s(), time.perf_counter()
    report = import_file(config, events, limits=ImportLimits(batch_size=batch_size))
    seconds = time.perf_counter() - t0
    busy = machine_busy_cpu_s() - busy0
    sampler.stop()
    me, workers = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    out.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "rows": report.rows,
                "applied": report.applied,
                "duplicates": report.duplicates,
                "errors": dict(report.errors),
                "batches": report.batches,
                "failed_batches": report.failed_batches,
                "peak_rss_kb": status_kb(os.getpid(), "VmHWM"),
                "worker_peak_rss_kb": sampler.worker_peak_kb,
                "all_processes_peak_rss_kb": sampler.total_peak_kb,
                "cpu_s": me.ru_utime + me.ru_stime,
                "worker_cpu_s": workers.ru_utime + workers.ru_stime,
                "machine_busy_cpu_s": busy,
                "workers": default_workers(),
            }
        )
    )


def child_baseline(database: Path, events: Path, batch_size: int, out: Path) -> None:
    """Run in a child process: plain SQLAlchemy Core executemany of the same rows."""
    import sqlalchemy as sa

    from infra import storage
    from keys import timefmt
    from node.schema import consent_events, consent_records, consent_scopes

    engine = storage.create_engine(f"sqlite:///{database}")
    storage.upgrade(engine)
    at = timefmt.to_db(timefmt.now())
    update = (
        consent_records.update()
        .where(consent_records.c.record_id == sa.bindparam("b_id"))
        .values(state=sa.bindparam("b_state"))
    )
    db_s, rows_done, t0 = 0.0, 0, time.perf_counter()
    for batch in _baseline_batches(events, batch_size, at):
        records, scopes, updates, event_rows = batch
        t = time.perf_counter()
        with engine.begin() as conn:
            if records:
                conn.execute(consent_records.insert(), records)
                conn.execute(consent_scopes.insert(), scopes)
            if updates:
                conn.execute(update, updates)
            conn.execute(consent_events.insert(), event_rows)
        db_s += time.perf_counter() - t
        rows_done += len(event_rows)
    wall = time.perf_counter() - t0
    engine.dispose()
    me = resource.getrusage(resource.RUSAGE_SELF)
    out.write_text(
        json.dumps(
            {
                "db_seconds": db_s,
                "seconds": wall,
                "rows": rows_done,
                "peak_rss_kb": status_kb(os.getpid(), "VmHWM"),
                "cpu_s": me.ru_utime + me.ru_stime,
            }
        )
    )


def _baseline_batches(
    events: Path, batch_size: int, at: datetime
) -> Iterator[tuple[list[dict[str, Any]], ...]]:
    from keys import timefmt

    def day(text: str) -> datetime | None:
        return timefmt.to_db(timefmt.parse(text)) if text else None

    with events.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        rows: list[list[str]] = []
        for row in reader:
            rows.append(row)
            if len(rows) == batch_size:
                yield _baseline_rows(rows, at, day)
                rows = []
        if rows:
            yield _baseline_rows(rows, at, day)


def _baseline_rows(
    rows: list[list[str]], at: datetime, day: Any
) -> tuple[list[dict[str, Any]], ...]:
    records, scopes, updates, events = [], [], [], []
    for r in rows:
        event, rid = r[0], r[1]
        if event == "given":
            valid_from, valid_until = day(r[6]), day(r[7])
            records.append(
                {
                    "record_id": rid,
                    "resident_id": r[2],
                    "lawful_basis": r[8],
                    "notice_url": r[9],
                    "notice_hash": r[10],
                    "language": r[11],
                    "jurisdiction": r[12],
                    "retention_days": int(r[13]),
                    "collection_method": r[14],
                    "withdrawal_method": r[15],
                    "valid_from": valid_from,
                    "valid_until": valid_until,
                    "state": "given",
                    "content_digest": "",
                }
            )
            scopes.extend(
                {
                    "record_id": rid,
                    "purpose": p,
                    "recipient": c,
                    "data_category": d,
                    "resident_id": r[2],
                    "state": "given",
                    "valid_from": valid_from,
                    "valid_until": valid_until,
                }
                for p in r[3].split(";")
                for c in r[4].split(";")
                for d in r[5].split(";")
            )
        else:
            updates.append({"b_id": rid, "b_state": event})
        events.append(
            {"record_id": rid, "event": event, "actor": "bench", "at": at, "receipt": b""}
        )
    return records, scopes, updates, events


def run_child(args: list[str], out: Path, console: Console) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args, str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        console.print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(f"{args[0]} failed with status {done.returncode}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def signing_rate(seconds: float = 2.0) -> float:
    """Ed25519 signatures per CPU second (of this process, so other load does not count), over a
    receipt-sized message."""
    from keys.ed25519 import Signer

    signer, message = Signer.generate(), b"x" * 1200
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        for _ in range(200):
            signer.sign(message)
        n += 200
    return n / (time.process_time() - t0)


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 events")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument(
        "--random-ids", action="store_true", help="UUIDv4-like record ids in no order"
    )
    args = parser.parse_args()
    events_n = 50_000 if args.quick else args.events
    console = Console(width=None if sys.stdout.isatty() else 140)

    from cli import sandbox

    work = Path(tempfile.mkdtemp(prefix="bench-consent-import-"))
    try:
        fed = sandbox.create(work / "federation")
        city = fed.cities["aurora"]
        events = work / "events.csv"
        t0 = time.perf_counter()
        counts = generate(events, events_n, fed.partner_id, random_ids=args.random_ids)
        console.print(
            f"generated {events_n:,} events ({counts}) in {time.perf_counter() - t0:.1f} s, "
            f"{events.stat().st_size / 1e6:.0f} MB"
        )
        console.print("importing (the CLI's import function, in a child process) ...")
        imp = run_child(
            ["--child-import", str(city.config), str(events), str(args.batch_size)],
            work / "import.json",
            console,
        )
        database_mb = (
            sum(p.stat().st_size for p in city.database.parent.glob(f"{city.database.name}*")) / 1e6
        )
        console.print("baseline (plain SQLAlchemy Core executemany, in a child process) ...")
        base = run_child(
            [
                "--child-baseline",
                str(work / "baseline.db"),
                str(events),
                str(args.batch_size),
            ],
            work / "baseline.json",
            console,
        )
        sign_per_core = signing_rate()
    finally:
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rate = imp["rows"] / imp["seconds"]
    base_rate = base["rows"] / base["db_seconds"]
    peak_mb = imp["peak_rss_kb"] / 1024
    worker_mb = imp["worker_peak_rss_kb"] / 1024
    cores = os.cpu_count() or 1
    own_cpu = imp["cpu_s"] + imp["worker_cpu_s"]
    params: dict[str, Any] = {
        "events": events_n,
        "event_mix": counts,
        "record_ids": "random (UUIDv4-like)" if args.random_ids else "growing with creation",
        "batch_size": args.batch_size,
        "worker_processes": imp["workers"],
        "applied": imp["applied"],
        "errors": imp["errors"],
        "failed_batches": imp["failed_batches"],
        "import_seconds": round(imp["seconds"], 2),
        "baseline_db_seconds": round(base["db_seconds"], 2),
        "baseline_wall_seconds": round(base["seconds"], 2),
        "baseline_cpu_us_per_event": round(1e6 * base["cpu_s"] / base["rows"], 1),
        "importer_cpu_s": round(imp["cpu_s"], 1),
        "worker_cpu_s": round(imp["worker_cpu_s"], 1),
        "machine_busy_cpu_s": round(imp["machine_busy_cpu_s"], 1),
        "other_load_cpu_s": round(max(0.0, imp["machine_busy_cpu_s"] - own_cpu), 1),
        "cpu_us_per_event": round(1e6 * own_cpu / imp["rows"], 1),
        "ed25519_signs_per_s_one_core": round(sign_per_core),
        # One signed statement per batch (node.consent_import), not one per event.
        "signing_share_of_cpu": round(imp["batches"] / sign_per_core / own_cpu, 5),
        "worker_peak_rss_mb": round(worker_mb, 1),
        "peak_rss_all_processes_mb": round(imp["all_processes_peak_rss_kb"] / 1024, 1),
        "baseline_peak_rss_mb": round(base["peak_rss_kb"] / 1024, 1),
        "database_mb": round(database_mb),
        "goal_events_per_s": GOAL_EVENTS_PER_S,
        "goal_peak_rss_mb": GOAL_PEAK_MB,
        "meets_rate_goal": rate >= GOAL_EVENTS_PER_S,
        "meets_memory_goal": peak_mb < GOAL_PEAK_MB,
        "cores": cores,
        **environment(),
    }
    figures = [
        Figure(
            f"{NAME}.events_per_s",
            rate,
            "events/s",
            True,
            base_rate,
            f"{NAME}.sqlalchemy_core_executemany.events_per_s",
            params,
        ),
        Figure(
            f"{NAME}.peak_rss_mb",
            peak_mb,
            "MB",
            False,
            base["peak_rss_kb"] / 1024,
            f"{NAME}.sqlalchemy_core_executemany.peak_rss_mb",
            params,
        ),
    ]
    console.print(figures_table(f"Bulk consent import of {events_n:,} events", figures))
    t = Table(title="Against the issue's goals, and what limits the rate")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("import rate (events/s)", fmt_number(rate, 0))
    t.add_row("goal (events/s)", fmt_number(GOAL_EVENTS_PER_S, 0))
    t.add_row("peak RSS of the importing process (MB)", fmt_number(peak_mb))
    t.add_row("peak RSS of one worker process (MB)", fmt_number(worker_mb))
    t.add_row(
        "peak RSS of all import processes together (MB)",
        fmt_number(params["peak_rss_all_processes_mb"]),
    )
    t.add_row("goal (MB)", fmt_number(GOAL_PEAK_MB, 0))
    t.add_row("CPU per event, importer + workers (µs)", fmt_number(params["cpu_us_per_event"]))
    t.add_row(
        f"  of which Ed25519 signatures ({sign_per_core:,.0f} per CPU second)",
        f"{100 * params['signing_share_of_cpu']:.2f} %",
    )
    t.add_row(
        "CPU per event, plain executemany baseline (µs)",
        fmt_number(params["baseline_cpu_us_per_event"]),
    )
    t.add_row(
        f"CPU ceiling of the import on {cores} idle cores (events/s)",
        fmt_number(cores * 1e6 / params["cpu_us_per_event"], 0),
    )
    t.add_row("other load on the machine meanwhile (CPU s)", fmt_number(params["other_load_cpu_s"]))
    console.print(t)
    path = write_figures(RESULTS_DIR / f"{NAME}.json", figures)
    console.print(f"wrote {path.relative_to(BENCH_DIR.parent)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-import":
        _, _, cfg, ev, bs, res = sys.argv
        child_import(Path(cfg), Path(ev), int(bs), Path(res))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-baseline":
        _, _, db, ev, bs, res = sys.argv
        child_baseline(Path(db), Path(ev), int(bs), Path(res))
    else:
        main()
