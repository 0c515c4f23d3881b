"""Merkle log appends on one PostgreSQL database from one process and from two (broker replicas).

    .venv/bin/python bench/log_replicas.py                 # 8 s per run, 1 and 8 threads
    .venv/bin/python bench/log_replicas.py --seconds 20 --threads 1,4,16

For each thread count: a fresh database on the machine's PostgreSQL server (postgres@127.0.0.1,
migrated as the product migrates), then P processes (1, then 2), each with an audit.log.MerkleLog of
its own on that database and T threads calling `append` in a loop for --seconds. Printed: appends/s
of all processes together, and a check that the stored log has indexes 0..n-1 once each. Not part
of `make bench`: a figure for README's "Beyond one machine".
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit.log import MerkleLog  # noqa: E402
from infra import storage  # noqa: E402
from keys.ed25519 import Signer  # noqa: E402

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def appender(url: str, key: str, threads: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One replica: a MerkleLog on `url` and `threads` threads appending for `seconds`."""
    engine = storage.create_engine(url)
    log = MerkleLog(engine, "bench/replicas", Signer.load(Path(key)))
    counts: list[int] = []
    stop = time.monotonic() + seconds

    def run() -> None:
        n = 0
        while time.monotonic() < stop:
            log.append(os.urandom(512), "bench")
            n += 1
        counts.append(n)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    engine.dispose()
    out.put(sum(counts))


def measure(processes: int, threads: int, seconds: float, key: str) -> tuple[float, int]:
    """Appends/s of `processes` replicas with `threads` each on a fresh database; the log size."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"cb_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        engine = storage.create_engine(url)
        storage.upgrade(engine)
        out: multiprocessing.Queue[int] = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(target=appender, args=(url, key, threads, seconds, out))
            for _ in range(processes)
        ]
        for p in procs:
            p.start()
        total = sum(out.get() for _ in procs)
        for p in procs:
            p.join()
        with engine.connect() as conn:
            count, last = conn.execute(sa.text("SELECT count(*), max(idx) FROM log_entries")).one()
        engine.dispose()
        assert last is None or count == last + 1, "indexes are not 0..n-1"
        return total / seconds, int(count)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", default="1,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key = str(Path(tmp) / "log.key")
        Signer.generate().save(Path(key))
        for threads in (int(t) for t in args.threads.split(",")):
            for processes in (1, 2):
                rate, size = measure(processes, threads, args.seconds, key)
                print(
                    f"{processes} process(es) x {threads} thread(s): {rate:,.0f} appends/s "
                    f"({size} entries, indexes 0..n-1 once each)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
