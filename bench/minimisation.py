"""Minimisation at city scale: a node's answer against the same SQL run directly, on three engines.

    make bench-minimisation          # or: .venv/bin/python bench/minimisation.py (about 10 minutes)
    .venv/bin/python bench/minimisation.py --quick               # 50,000 residents, under a minute
    .venv/bin/python bench/minimisation.py --engines sqlite,duckdb --runs 3

The issue's figure ("Speed and memory"): a synthetic city of 1,000,000 residents (60% consenting to
the purpose) and 3,000,000 trips; query: trips and distinct residents by district and mode, for one
purpose and recipient, k = 10. Goals: end to end through the node's gRPC call at most 1.5x the same
SQL run directly on the same engine; the embedded default within 2x of DuckDB's raw SQL time; node
peak memory under 300 MB while answering.

What runs, per engine, on the same generated rows. Engines: sqlite, postgresql, duckdb (DuckDB
settings: the node's default `[duckdb]` table) and duckdb_limited (the same DuckDB file with
`--duckdb-limit` settings, by default memory_limit=100MB&threads=1); the node (its `[duckdb]` table)
and the raw connection get the same settings.

1. Data, generated once (DuckDB in memory, deterministic hashes of the row number) and bulk loaded:
   SQLite by executemany in large transactions (journal off while loading, then WAL), PostgreSQL by
   COPY, DuckDB by INSERT ... SELECT from the generating database. Trips use the node's synthetic
   schema (node.synthetic.trips, with its resident_id index; DuckDB gets no indexes: it scans
   columns). Consents are plain inserts into consent_records, consent_scopes and consent_events
   (one record per resident asked: `--consent-share` given, `--withdrawn-share` given then
   withdrawn, the rest never asked; event receipts are placeholders, nothing reads them here).
   SQLite and PostgreSQL are analysed after loading (PostgreSQL's autovacuum would do so anyway).
2. The node: `python -m cli.main node serve` as its own process. SQLite and PostgreSQL: node
   database = the data's database (consents beside the data). DuckDB: the node database is a SQLite
   file with the consents and `data` is the DuckDB file (opened read-only), so the node mirrors
   consent into a temporary table on its DuckDB connection (node.aggregate.push_consenting: in
   full on the connection's first query, then only the consent records changed since) and
   computes the contributors' bitmap for the transparency record there.
3. Raw SQL against end to end, alternating (raw, e2e, e2e, raw, ...) after one warm-up each, so
   that other load on a shared machine falls on both alike; medians of --runs. Raw SQL is the
   statement the node compiles (node.aggregate.compile_query for the dialect, consent semi-join on
   consent_scopes) executed through SQLAlchemy on the engine; for DuckDB, consent_scopes is copied
   into the DuckDB file for this, so the statement is exactly the one a node with its consents
   beside its data would run. End to end is one RunQuery call to the node, broker-signed (fresh
   single-use partner token each, minted untimed) over mTLS with the broker's certificate; every
   answer's cells are checked against raw SQL's.
   Node peak memory: VmHWM of the node process, reset (/proc/<pid>/clear_refs) after start-up, just
   before the first query, and read after the last.
4. Stages, timed outside the node after it stopped (median of --stage-runs): the transparency
   record (node.transparency: the contributors' bitmap computed where the data lives, then written;
   rolled back) and, for DuckDB, the consent sync (in full once, as on a new connection; with
   nothing changed; after 1,000 withdrawals) and the aggregate on the mirror (after one untimed
   warm-up: it then computes the contributors' bitmap in its own scan, and the transparency
   record only writes it).
   The first (warm-up) query's time is reported too: it pays for numbering residents (SQLite,
   PostgreSQL: numbered in its transparency record) or loading the mirror (DuckDB) once.

Output: a table, and bench/results/minimisation.json in the shared figure format (bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import grpc
import sqlalchemy as sa
from common import (
    RESULTS_DIR,
    Children,
    Figure,
    console,
    environment,
    fmt_number,
    process_cpu_s,
    python,
    status_kb,
    terminate_on_sigterm,
    write_figures,
)
from rich.console import Console
from rich.table import Table
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from citybroker.node.v1 import node_pb2
from cli import sandbox
from domain import agreement as agreement_doc
from domain import statements
from domain.authorisation import grant_for
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.city_gateway import CityChannels
from edge.operator_client import OperatorClient
from edge.wire import envelope_from_pb, envelope_to_pb
from infra import storage
from infra.config import TlsFiles
from keys import timefmt, tokens
from keys.tokens import Call
from node import aggregate, synthetic, taxonomy
from node.config import NodeConfig
from node.schema import consent_events, consent_records, consent_scopes
from node.transparency import Exchange, ExchangeRecorder

NAME = "minimisation"
# duckdb: the node's default DuckDB settings; duckdb_limited: those of --duckdb-limit (by default one
# thread); the node and the raw SQL connection alike.
ENGINES = ("sqlite", "postgresql", "duckdb", "duckdb_limited")
EMBEDDED = ("sqlite", "duckdb", "duckdb_limited")
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PURPOSE = "urban-mobility-planning"
CATEGORY = "mobility"
K = 10
GOAL_E2E_RATIO = 1.5
GOAL_DEFAULT_RATIO = 2.0
GOAL_PEAK_MB = 300.0
DISTRICTS = (
    "Harbour",
    "Old Town",
    "Northgate",
    "Riverside",
    "Market",
    "Lakeside",
    "University",
    "Airport",
    "Docklands",
    "Hillside",
    "Central",
    "Westend",
)
CITY = sandbox.CityPlan("aurora", "Aurora", "EU-FI", DISTRICTS)
QUERY = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("district"), Dimension("mode")),
    cities=(CITY.id,),
)
QUERY_TEXT = (
    "count_records, count_residents by district, mode; dataset mobility; purpose "
    f"{PURPOSE}; one partner (by name or its recipient category); k = {K}"
)
CALL_TIMEOUT_S = 900.0
# Consents withdrawn before a timed consent sync (stages): what a sync pays for a change.
WITHDRAWALS = 1_000
PLACEHOLDER_RECEIPT = b"bench placeholder: not a signed consent receipt"
TRIP_COLUMNS = ("trip_id", "resident_id", "trip_date", "mode", "district", "distance_km")


# -- the city's data, generated once --------------------------------------------------------------


class CityData:
    """Residents, their trips and their consents, generated in an in-memory DuckDB from hashes of
    row numbers (deterministic for a given size and seed), and read out per engine in bulk."""

    def __init__(
        self,
        residents: int,
        trips: int,
        consent_share: float,
        withdrawn_share: float,
        seed: int,
        consent_from: datetime,
    ) -> None:
        self.residents, self.trips = residents, trips
        self.consenting = round(residents * consent_share)
        self.withdrawn = min(residents - self.consenting, round(residents * withdrawn_share))
        self.consent_from = consent_from
        self.db = duckdb.connect()
        self.db.execute(f"SET threads = {os.cpu_count() or 1}")
        s = f"'{seed}"
        self.db.execute(
            f"""
            CREATE TABLE residents AS
            SELECT i,
                   printf('{CITY.id}-r%07d', i) AS resident_id,
                   ($districts::VARCHAR[])[1 + (hash(i, {s}:district') % $n)::INTEGER] AS district,
                   row_number() OVER (ORDER BY hash(i, {s}:consent'), i) AS consent_rank
            FROM range({residents}) t(i)
            """,
            {"districts": list(DISTRICTS), "n": len(DISTRICTS)},
        )
        # Mode weights as node.synthetic: bus 30, tram 20, bike 15, walk 25, car 10.
        self.db.execute(
            f"""
            CREATE TABLE trips AS
            SELECT t + 1 AS trip_id,
                   r.resident_id,
                   DATE '2026-08-01' + (hash(t, {s}:day') % 92)::INTEGER AS trip_date,
                   CASE WHEN m < 30 THEN 'bus' WHEN m < 50 THEN 'tram' WHEN m < 65 THEN 'bike'
                        WHEN m < 90 THEN 'walk' ELSE 'car' END AS mode,
                   r.district,
                   round(0.3 + (hash(t, {s}:km') % 247001) / 10000.0, 1) AS distance_km
            FROM (SELECT t, hash(t, {s}:mode') % 100 AS m,
                         hash(t, {s}:resident') % {residents} AS who FROM range({trips}) x(t)) g
            JOIN residents r ON r.i = g.who
            ORDER BY trip_id
            """
        )
        self.db.execute(
            f"""
            CREATE TABLE consents AS
            SELECT resident_id || '-c1' AS record_id, resident_id,
                   CASE WHEN consent_rank <= {self.consenting} THEN 'given' ELSE 'withdrawn' END
                       AS state
            FROM residents WHERE consent_rank <= {self.consenting + self.withdrawn}
            ORDER BY record_id
            """
        )

    def chunks(
        self, sql: str, params: list[Any] | None = None, size: int = 100_000
    ) -> Iterator[list[tuple[Any, ...]]]:
        cur = self.db.cursor()
        cur.execute(sql, params or [])
        while rows := cur.fetchmany(size):
            yield rows
        cur.close()

    def to_csv(self, sql: str, path: Path, params: list[Any] | None = None) -> Path:
        self.db.execute(f"COPY ({sql}) TO '{path}' (FORMAT csv, HEADER false)", params or [])
        return path

    # The rows of each table as selects on the generating database; `at` renders the consent time.
    def trips_sql(self, date_text: bool) -> str:
        date = "strftime(trip_date, '%Y-%m-%d')" if date_text else "trip_date"
        return f"SELECT trip_id, resident_id, {date}, mode, district, distance_km FROM trips"

    @staticmethod
    def records_sql() -> str:
        return "SELECT record_id, resident_id, $1 AS valid_from, state FROM consents"

    @staticmethod
    def scopes_sql() -> str:
        return (
            "SELECT record_id, $2 AS purpose, $3 AS recipient, $4 AS data_category, resident_id,"
            " state, $1 AS valid_from, NULL AS valid_until FROM consents"
        )

    @staticmethod
    def events_sql(receipt: str) -> str:
        return (
            f"SELECT record_id, 'given' AS event, 'resident' AS actor, $1 AS at, {receipt} AS r"
            " FROM consents UNION ALL SELECT record_id, 'withdrawn', 'resident', $1, "
            f"{receipt} FROM consents WHERE state = 'withdrawn'"
        )

    def scope_params(self, at: Any, recipient: str) -> list[Any]:
        return [at, PURPOSE, recipient, CATEGORY]


# -- loading -------------------------------------------------------------------------------------


def _ddl(dialect: sa.Dialect) -> tuple[str, list[str]]:
    table = str(CreateTable(synthetic.trips).compile(dialect=dialect))
    return table, [str(CreateIndex(i).compile(dialect=dialect)) for i in synthetic.trips.indexes]


def _sqlite_datetime(value: datetime) -> str:
    """A naive UTC datetime as SQLAlchemy's SQLite DATETIME stores it, so comparisons agree."""
    d = sqlite_dialect.dialect()
    proc = sa.DateTime().dialect_impl(d).bind_processor(d)
    assert proc is not None
    return str(proc(value))


def load_sqlite(path: Path, data: CityData, recipient: str, with_trips: bool) -> dict[str, Any]:
    """Node schema by Alembic (as the node creates it), then bulk inserts with the journal off."""
    engine = storage.create_engine(f"sqlite:///{path}")
    storage.upgrade(engine)
    engine.dispose()
    con = sqlite3.connect(path, isolation_level=None)
    pragmas = {
        "journal_mode": "OFF",
        "synchronous": "OFF",
        "cache_size": "-262144",
        "temp_store": "MEMORY",
    }
    for k, v in pragmas.items():
        con.execute(f"PRAGMA {k}={v}")
    at = _sqlite_datetime(data.consent_from)
    t0 = time.perf_counter()

    def insert(table: str, columns: tuple[str, ...], rows: Iterator[list[tuple[Any, ...]]]) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        con.execute("BEGIN")
        for chunk in rows:
            con.executemany(sql, chunk)
        con.execute("COMMIT")

    if with_trips:
        table, indexes = _ddl(sqlite_dialect.dialect())
        con.execute(table)
        insert(synthetic.TRIPS_TABLE, TRIP_COLUMNS, data.chunks(data.trips_sql(date_text=True)))
        for ddl in indexes:
            con.execute(ddl)
    insert(
        "consent_records",
        ("record_id", "resident_id", "valid_from", "state"),
        data.chunks(data.records_sql(), [at]),
    )
    insert(
        "consent_scopes",
        tuple(c.name for c in consent_scopes.columns),
        data.chunks(data.scopes_sql(), data.scope_params(at, recipient)),
    )
    insert(
        "consent_events",
        ("record_id", "event", "actor", "at", "receipt"),
        data.chunks(data.events_sql("$2::BLOB"), [at, PLACEHOLDER_RECEIPT]),
    )
    con.execute("ANALYZE")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return {"load_s": time.perf_counter() - t0, "bulk_load_pragmas": pragmas, "analyzed": True}


def load_postgres(url: str, data: CityData, recipient: str, work: Path) -> dict[str, Any]:
    """Node schema by Alembic, then COPY of CSV files written by the generating database."""
    engine = storage.create_engine(url)
    storage.upgrade(engine)
    t0 = time.perf_counter()
    at = data.consent_from
    files = {
        synthetic.TRIPS_TABLE: (
            TRIP_COLUMNS,
            data.to_csv(data.trips_sql(date_text=False), work / "trips.csv"),
        ),
        "consent_records": (
            ("record_id", "resident_id", "valid_from", "state"),
            data.to_csv(data.records_sql(), work / "records.csv", [at]),
        ),
        "consent_scopes": (
            tuple(c.name for c in consent_scopes.columns),
            data.to_csv(data.scopes_sql(), work / "scopes.csv", data.scope_params(at, recipient)),
        ),
        "consent_events": (
            ("record_id", "event", "actor", "at", "receipt"),
            data.to_csv(
                data.events_sql("$2"), work / "events.csv", [at, "\\x" + PLACEHOLDER_RECEIPT.hex()]
            ),
        ),
    }
    table, indexes = _ddl(engine.dialect)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(table)
        for name, (columns, path) in files.items():
            copy_sql = f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT csv)"
            with cur.copy(copy_sql) as copy, path.open("rb") as f:
                while block := f.read(1 << 20):
                    copy.write(block)
            path.unlink()
        for ddl in indexes:
            cur.execute(ddl)
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name in files:
            conn.execute(sa.text(f"VACUUM (ANALYZE) {name}"))
    engine.dispose()
    return {"load_s": time.perf_counter() - t0, "bulk_load": "COPY (csv), VACUUM (ANALYZE)"}


def load_duckdb(path: Path, data: CityData, recipient: str) -> dict[str, Any]:
    """CREATE TABLE AS from the generating database; consent_scopes too, for the raw SQL."""
    t0 = time.perf_counter()
    data.db.execute(f"ATTACH '{path}' AS target")
    try:
        data.db.execute(
            f"""CREATE TABLE target.{synthetic.TRIPS_TABLE} (trip_id INTEGER NOT NULL,
                resident_id VARCHAR(64) NOT NULL, trip_date DATE NOT NULL,
                mode VARCHAR(16) NOT NULL, district VARCHAR(64) NOT NULL,
                distance_km DOUBLE NOT NULL)"""
        )
        data.db.execute(
            f"INSERT INTO target.{synthetic.TRIPS_TABLE} {data.trips_sql(date_text=False)}"
        )
        data.db.execute(
            """CREATE TABLE target.consent_scopes (record_id VARCHAR(128) NOT NULL,
                purpose VARCHAR(128) NOT NULL, recipient VARCHAR(128) NOT NULL,
                data_category VARCHAR(128) NOT NULL, resident_id VARCHAR(128) NOT NULL,
                state VARCHAR(32) NOT NULL, valid_from TIMESTAMP NOT NULL,
                valid_until TIMESTAMP)"""
        )
        data.db.execute(
            f"INSERT INTO target.consent_scopes {data.scopes_sql()}",
            data.scope_params(data.consent_from, recipient),
        )
        data.db.execute("CHECKPOINT target")
    finally:
        data.db.execute("DETACH target")
    return {"load_s": time.perf_counter() - t0, "bulk_load": "CREATE TABLE + INSERT ... SELECT"}


# -- measuring -----------------------------------------------------------------------------------


Cells = dict[tuple[str, str], tuple[int, int]]


@dataclass
class EngineRun:
    engine: str
    version: str = ""
    load_s: float = 0.0
    load: dict[str, Any] = field(default_factory=dict)
    raw_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    stages_s: dict[str, float] = field(default_factory=dict)
    peak_mb: float = 0.0
    idle_mb: float = 0.0
    lifetime_peak_mb: float = 0.0
    peak_reset: bool = False
    node_cpu_s: float = 0.0
    first_s: float = 0.0
    load_average: tuple[float, float] = (0.0, 0.0)
    cells: int = 0
    error: str = ""

    @property
    def raw_ms(self) -> float:
        return 1000 * statistics.median(self.raw_s) if self.raw_s else float("nan")

    @property
    def e2e_ms(self) -> float:
        return 1000 * statistics.median(self.e2e_s) if self.e2e_s else float("nan")


def raw_cells(rows: list[Any]) -> Cells:
    return {(str(r.d0), str(r.d1)): (int(r.m0), int(r.m1)) for r in rows}


class RawSql:
    """The node's compiled statement, executed on the engine through SQLAlchemy, one connection."""

    def __init__(
        self,
        url: str,
        config: NodeConfig,
        recipients: tuple[str, ...],
        duckdb_settings: storage.DuckDBSettings | None,
    ) -> None:
        # DuckDB read-only, as the node opens it: both processes can then open the file.
        self.engine = storage.create_engine(
            url, read_only=duckdb_settings is not None, duckdb=duckdb_settings
        )
        ds = config.catalogue.datasets[QUERY.dataset]
        self.stmt = aggregate.compile_query(
            aggregate.Scan(QUERY, ds, recipients, timefmt.now()), self.engine.dialect.name
        )
        self.sql = str(self.stmt.compile(dialect=self.engine.dialect))
        self.conn = self.engine.connect()
        if self.engine.dialect.name == "duckdb":  # no progress bar over the bench's own output
            self.conn.exec_driver_sql("SET enable_progress_bar = false")

    def run(self) -> Cells:
        return raw_cells(list(self.conn.execute(self.stmt).all()))

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


def _withdraw(node: sa.Engine, count: int, at: datetime) -> None:
    """Withdraw `count` given consents as the registry would (state, and one event each)."""
    with node.begin() as conn:
        ids = list(
            conn.execute(
                sa.select(consent_records.c.record_id)
                .where(consent_records.c.state == "given")
                .limit(count)
            ).scalars()
        )
        for table in (consent_records, consent_scopes):
            conn.execute(table.update().where(table.c.record_id.in_(ids)).values(state="withdrawn"))
        conn.execute(
            consent_events.insert(),
            [
                {
                    "record_id": r,
                    "event": "withdrawn",
                    "actor": "resident",
                    "at": at,
                    "receipt": PLACEHOLDER_RECEIPT,
                }
                for r in ids
            ],
        )


def measure_stages(
    run: EngineRun, config: NodeConfig, recipients: tuple[str, ...], pushed: bool, runs: int
) -> None:
    """What the node does beyond the aggregate, timed outside the node (median of `runs`):
    with the data elsewhere, syncing the consent mirror on the data connection (once in full, as
    on a new connection; then with nothing changed; then after WITHDRAWALS withdrawals) and the
    aggregate on it; and the transparency record (node.transparency: the contributors' bitmap
    computed where the data lives, then written; the write is rolled back, so every run starts
    from the same state). The withdrawals stay: this runs after the node's runs."""
    ds = config.catalogue.datasets[QUERY.dataset]
    node = storage.create_engine(config.database)
    data = node if not pushed else storage.create_engine(config.data, True, config.duckdb)
    recorder = ExchangeRecorder(node, data)
    compiler = aggregate.QueryCompiler()
    times: dict[str, list[float]] = {}

    def timing(stage: str, t0: float) -> None:
        times.setdefault(stage, []).append(time.perf_counter() - t0)

    def sync(conn: sa.Connection, stage: str) -> None:
        t0 = time.perf_counter()
        aggregate.push_consenting(conn, node, PURPOSE, recipients, CATEGORY, timefmt.now())
        timing(stage, t0)

    try:
        with data.connect() as conn:
            if pushed:
                sync(conn, "consent_sync_full")
                # Untimed, as the node's warm-up query: DuckDB then knows the query's cell count
                # and computes the contributors in the aggregate's own scan (node.aggregate.run).
                compiler.run(
                    conn, aggregate.Scan(QUERY, ds, recipients, timefmt.now(), pushed=True), K
                )
            for _ in range(runs):
                at = timefmt.now()
                bitmap = None
                if pushed:
                    sync(conn, "consent_sync_unchanged")
                    _withdraw(node, WITHDRAWALS, at)
                    sync(conn, f"consent_sync_{WITHDRAWALS}_withdrawals")
                    t0 = time.perf_counter()
                    answer = compiler.run(
                        conn, aggregate.Scan(QUERY, ds, recipients, at, pushed=True), K
                    )
                    timing("aggregate_on_mirror", t0)
                    # Contributors from the aggregate's scan (DuckDB): the record only writes.
                    bitmap = answer.contributor_bitmap
                contributors = compiler.contributors_statement(
                    aggregate.Scan(QUERY, ds, recipients, at, pushed=pushed), conn.dialect.name, []
                )
                assert contributors is not None
                stmt, params = contributors if bitmap is None else (None, None)
                exchange = Exchange(
                    f"bench-{uuid.uuid4()}",
                    recipients[0],
                    PURPOSE,
                    QUERY.dataset,
                    "bench",
                    1,
                    at,
                    0,
                )
                t0 = time.perf_counter()
                write = recorder.side_write(
                    exchange, stmt, conn, 0, params, contributor_bitmap=bitmap
                )
                with node.connect() as target:
                    trans = target.begin()
                    write(target, 0)
                    trans.rollback()
                timing("transparency_record", t0)
    finally:
        if data is not node:
            data.dispose()
        node.dispose()
    run.stages_s = {k: statistics.median(v) for k, v in times.items()}


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux 4.0+); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Partner:
    """Broker-signed queries, each with a fresh single-use partner token, over the broker's mTLS."""

    def __init__(self, fed: sandbox.LocalFederation) -> None:
        self.fed = fed
        tls = fed.root / "tls"
        self.channels = CityChannels(
            TlsFiles(fed.ca_cert, tls / f"{fed.broker_id}.crt", tls / f"{fed.broker_id}.key")
        )

    def request(self) -> node_pb2.RunQueryRequest:
        f = self.fed
        grant = grant_for(Call.QUERY, QUERY)
        token = tokens.issue(f.partner_signer, f.partner_id, f.broker_id, grant, 120)
        env = statements.sign_request(
            statements.QUERY,
            statements.UnsignedRequest(
                str(uuid.uuid4()),
                f.broker_id,
                f.partner_id,
                token,
                QUERY,
            ),
            f.broker_signer,
        )
        return node_pb2.RunQueryRequest(signed_query=envelope_to_pb(env))

    def wait_ready(self, address: str, children: Children, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            children.check()
            try:
                grpc.channel_ready_future(self.channels.channel(address)).result(timeout=1.0)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node at {address} not ready in {timeout_s} s") from None

    def ask(self, address: str, request: node_pb2.RunQueryRequest) -> Cells:
        response = self.channels.stub(address).RunQuery(request, timeout=CALL_TIMEOUT_S)
        payload = statements.verify_result(
            envelope_from_pb(response.signed_result), self.fed.bundle
        )
        if payload["withheld"]:
            raise RuntimeError(f"cells withheld: {payload['withheld']}")
        return {
            (c["key"]["district"], c["key"]["mode"]): (
                int(c["values"]["count_records"]),
                int(c["values"]["count_residents"]),
            )
            for c in payload["cells"]
        }

    def close(self) -> None:
        self.channels.close()


def measure(
    run: EngineRun,
    fed: sandbox.LocalFederation,
    config_path: Path,
    address: str,
    raw: RawSql,
    runs: int,
    logs: Path,
) -> None:
    """Start the node, then alternate raw SQL and end-to-end runs (one warm-up each first), so
    both see the same machine: other load on a shared machine moves both alike."""
    partner = Partner(fed)
    layout = fed.cities[CITY.id]
    with Children(logs) as children:
        pid = children.start(
            f"node-{run.engine}",
            [python(), "-m", "cli.main", "node", "serve", "--config", str(config_path)],
        )
        try:
            partner.wait_ready(address, children)
            op = OperatorClient(address, fed.ca_cert, layout.operator_cert, layout.operator_key)
            try:
                op.activate_agreement(
                    agreement_doc.sign(
                        fed.agreement(CITY.id, k=K), layout.signer, fed.partner_signer
                    )
                )
            finally:
                op.close()
            run.idle_mb = status_kb(pid, "VmRSS") / 1024
            run.lifetime_peak_mb = status_kb(pid, "VmHWM") / 1024
            run.peak_reset = _reset_peak(pid)
            expect = raw.run()
            run.cells = len(expect)
            load0 = os.getloadavg()[0]

            def e2e() -> float:
                request = partner.request()  # a fresh single-use token, minted untimed
                t0 = time.perf_counter()
                cells = partner.ask(address, request)
                took = time.perf_counter() - t0
                if cells != expect:
                    raise RuntimeError(f"{run.engine}: the node's cells differ from raw SQL's")
                return took

            def direct() -> float:
                t0 = time.perf_counter()
                cells = raw.run()
                took = time.perf_counter() - t0
                if cells != expect:
                    raise RuntimeError(f"{run.engine}: raw SQL's cells changed between runs")
                return took

            cpu0 = process_cpu_s(pid)
            run.first_s = e2e()  # warm-up: also loads the consent mirror, numbers residents
            for i in range(runs):
                first, second = (direct, e2e) if i % 2 == 0 else (e2e, direct)
                a, b = first(), second()
                run.raw_s.append(a if first is direct else b)
                run.e2e_s.append(b if first is direct else a)
            run.node_cpu_s = (process_cpu_s(pid) - cpu0) / (runs + 1)
            run.load_average = (load0, os.getloadavg()[0])
            run.peak_mb = status_kb(pid, "VmHWM") / 1024
            run.lifetime_peak_mb = max(run.lifetime_peak_mb, run.peak_mb)
        finally:
            partner.close()


# -- the run -------------------------------------------------------------------------------------


def write_config(
    fed: sandbox.LocalFederation,
    engine: str,
    database: str,
    data: str,
    duckdb_settings: storage.DuckDBSettings | None = None,
) -> tuple[Path, str]:
    """The sandbox city's node config with the bench's databases and only the dataset asked."""
    layout = fed.cities[CITY.id]
    config = tomllib.loads(layout.config.read_text())
    address = f"127.0.0.1:{sandbox.free_port()}"
    config.update({"listen": address, "database": database, "data": data})
    config["datasets"] = {QUERY.dataset: config["datasets"][QUERY.dataset]}
    if duckdb_settings is not None:
        config["duckdb"] = duckdb_settings.config()
    path = fed.root / f"node-{CITY.id}-{engine}.toml"
    sandbox.write_toml(path, config)
    return path, address


def engine_version(engine: str, url: str) -> str:
    if engine == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    if engine.startswith("duckdb"):
        return f"DuckDB {duckdb.__version__}"
    e = sa.create_engine(url)
    try:
        with e.connect() as conn:
            return "PostgreSQL " + str(conn.execute(sa.text("SHOW server_version")).scalar())
    finally:
        e.dispose()


def run_engine(
    engine: str,
    fed: sandbox.LocalFederation,
    data: CityData,
    work: Path,
    runs: int,
    out: Console,
    postgres_url: str | None,
    stage_runs: int,
    duckdb_limit: str,
) -> tuple[EngineRun, str]:
    run = EngineRun(engine)
    recipient = fed.partner_id
    party = fed.bundle.party(fed.partner_id)
    recipients = (recipient, *(taxonomy.CATEGORY_PREFIX + c for c in party.categories))  # type: ignore[union-attr]
    d = work / engine
    d.mkdir()
    raw_url: str
    settings: storage.DuckDBSettings | None = None
    if engine == "sqlite":
        url = f"sqlite:///{d / 'city.db'}"
        with out.status("sqlite: loading"):
            run.load = load_sqlite(d / "city.db", data, recipient, with_trips=True)
        config_path, address = write_config(fed, engine, url, url)
        raw_url = url
    elif engine == "postgresql":
        assert postgres_url is not None
        url = postgres_url
        with out.status("postgresql: loading (COPY)"):
            run.load = load_postgres(url, data, recipient, d)
        config_path, address = write_config(fed, engine, url, url)
        raw_url = url
    else:
        node_db, duck = d / "node.db", d / "city.duckdb"
        url = f"sqlite:///{node_db}"
        with out.status(f"{engine}: loading (node consents in SQLite, trips in DuckDB)"):
            run.load = load_sqlite(node_db, data, recipient, with_trips=False)
            run.load["load_s"] += load_duckdb(duck, data, recipient)["load_s"]
        # Read-only: the node and this process both open the file (DuckDB allows one writing
        # process, or any number of read-only ones); temporary tables still work.
        raw_url = f"duckdb:///{duck}"
        settings = storage.DuckDBSettings()
        if engine == "duckdb_limited":
            limit = dict(kv.split("=", 1) for kv in duckdb_limit.split("&"))
            settings = storage.DuckDBSettings(limit["memory_limit"], int(limit["threads"]))
        run.load["duckdb_settings"] = settings.config()
        config_path, address = write_config(fed, engine, url, raw_url, settings)
    run.load_s = run.load.pop("load_s")
    run.version = engine_version(engine, raw_url)
    out.print(f"{engine}: loaded in {run.load_s:.1f} s ({run.version})")
    config = NodeConfig.load(config_path)
    raw = RawSql(raw_url, config, recipients, settings)
    try:
        with out.status(f"{engine}: raw SQL and end to end through the node, {runs} runs each"):
            measure(run, fed, config_path, address, raw, runs, work / "logs")
    finally:
        raw.close()
    out.print(
        f"{engine}: raw SQL median {run.raw_ms:,.0f} ms, end to end median {run.e2e_ms:,.0f} ms"
        f" ({run.e2e_ms / run.raw_ms:.2f}x), node peak {run.peak_mb:.0f} MB ({run.cells} cells);"
        f" first query {1000 * run.first_s:,.0f} ms"
    )
    if stage_runs:
        with out.status(f"{engine}: the node's stages, {stage_runs} runs"):
            measure_stages(run, config, recipients, config.data != config.database, stage_runs)
        out.print(
            f"{engine}: stages "
            + ", ".join(f"{k} {1000 * v:,.0f} ms" for k, v in run.stages_s.items())
        )
    return run, raw.sql


def figures(runs: list[EngineRun], params: dict[str, Any], sqls: dict[str, str]) -> list[Figure]:
    out: list[Figure] = []
    by = {r.engine: r for r in runs if not r.error}
    duck = by.get("duckdb")
    for r in runs:
        if r.error:
            continue
        p = {
            **params,
            "engine": r.engine,
            "engine_version": r.version,
            "load_s": round(r.load_s, 2),
            "load": r.load,
        }
        base = f"{NAME}.{r.engine}"
        out.append(
            Figure(
                f"{base}.end_to_end",
                r.e2e_ms,
                "ms",
                False,
                r.raw_ms,
                f"{base}.raw_sql",
                {
                    **p,
                    "goal_ratio_max": GOAL_E2E_RATIO,
                    "sql": sqls.get(r.engine, ""),
                    "e2e_runs_ms": [round(1000 * t, 1) for t in r.e2e_s],
                    "raw_runs_ms": [round(1000 * t, 1) for t in r.raw_s],
                    "node_cpu_s_per_query": round(r.node_cpu_s, 3),
                    "first_query_ms": round(1000 * r.first_s, 1),
                    "load_average_1m_before_after": [round(x, 2) for x in r.load_average],
                    "consents": "pushed to the data connection"
                    if r.engine.startswith("duckdb")
                    else "beside the data (node database = data database)",
                },
            )
        )
        if duck is not None:
            out.append(
                Figure(
                    f"{base}.raw_sql",
                    r.raw_ms,
                    "ms",
                    False,
                    duck.raw_ms,
                    f"{NAME}.duckdb.raw_sql",
                    {**p, "raw_runs_ms": [round(1000 * t, 1) for t in r.raw_s]},
                )
            )
            out.append(
                Figure(
                    f"{base}.end_to_end_vs_duckdb_raw",
                    r.e2e_ms,
                    "ms",
                    False,
                    duck.raw_ms,
                    f"{NAME}.duckdb.raw_sql",
                    {
                        **p,
                        "goal_ratio_max": GOAL_DEFAULT_RATIO if r.engine in EMBEDDED else None,
                    },
                )
            )
        out.append(
            Figure(
                f"{base}.node_peak_rss",
                r.peak_mb,
                "MB",
                False,
                r.idle_mb,
                f"{base}.node_idle_rss",
                {
                    **p,
                    "goal_max_mb": GOAL_PEAK_MB,
                    "measure": "VmHWM of the node process, reset just before the first query"
                    if r.peak_reset
                    else "VmHWM of the node process over its life (reset not permitted here)",
                    "lifetime_peak_mb": round(r.lifetime_peak_mb, 1),
                },
            )
        )
        for stage, s in r.stages_s.items():
            out.append(
                Figure(
                    f"{base}.stage.{stage}",
                    1000 * s,
                    "ms",
                    False,
                    r.raw_ms,
                    f"{base}.raw_sql",
                    {
                        **p,
                        "stage_runs": params["stage_runs"],
                        "measured": "outside the node, after the node runs, writes rolled back",
                    },
                )
            )
    return out


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else (" [green]ok[/]" if ok else " [red]over[/]")


def report(out: Console, runs: list[EngineRun], title: str) -> None:
    duck = next((r for r in runs if r.engine == "duckdb" and not r.error), None)
    t = Table(title=title)
    for col in (
        "engine",
        "load s",
        "raw SQL ms",
        "end to end ms",
        f"e2e / raw (<= {GOAL_E2E_RATIO})",
        f"e2e / DuckDB raw (<= {GOAL_DEFAULT_RATIO} embedded)",
        f"node peak MB (< {GOAL_PEAK_MB:.0f})",
    ):
        t.add_column(col, justify="left" if col == "engine" else "right")
    for r in runs:
        if r.error:
            t.add_row(r.engine, "-", "-", "-", "-", "-", f"[red]{r.error[:60]}[/]")
            continue
        ratio = r.e2e_ms / r.raw_ms
        vs = r.e2e_ms / duck.raw_ms if duck else None
        t.add_row(
            f"{r.engine} ({r.version})",
            fmt_number(r.load_s),
            fmt_number(r.raw_ms, 0),
            fmt_number(r.e2e_ms, 0),
            fmt_number(ratio, 2) + _verdict(ratio <= GOAL_E2E_RATIO),
            fmt_number(vs, 2)
            + _verdict(
                vs <= GOAL_DEFAULT_RATIO if vs is not None and r.engine in EMBEDDED else None
            ),
            fmt_number(r.peak_mb, 0) + _verdict(r.peak_mb < GOAL_PEAK_MB),
        )
    out.print(t)
    s = Table(title="where the node's time goes (stages timed outside the node, median)")
    for col in ("engine", "raw SQL ms", "stage", "ms", "x raw SQL"):
        s.add_column(col, justify="left" if col in ("engine", "stage") else "right")
    for r in runs:
        for stage, sec in r.stages_s.items():
            s.add_row(
                r.engine,
                fmt_number(r.raw_ms, 0),
                stage,
                fmt_number(1000 * sec, 0),
                fmt_number(1000 * sec / r.raw_ms, 2),
            )
    out.print(s)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--residents", type=int, default=1_000_000)
    p.add_argument("--trips", type=int, default=3_000_000)
    p.add_argument("--quick", action="store_true", help="50,000 residents, 150,000 trips")
    p.add_argument("--consent-share", type=float, default=0.6)
    p.add_argument("--withdrawn-share", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=5, help="timed runs per measure (plus a warm-up)")
    p.add_argument(
        "--stage-runs", type=int, default=2, help="runs per stage breakdown (0: no breakdown)"
    )
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument(
        "--duckdb-limit",
        default="memory_limit=100MB&threads=1",
        help="DuckDB settings (URL query) of the duckdb_limited engine, node and raw SQL alike",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", type=Path, default=None, help="work directory (kept); default temp")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{NAME}.json")
    args = p.parse_args(argv)
    if args.quick:
        args.residents, args.trips = 50_000, 150_000
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if bad := set(args.engines) - set(ENGINES):
        p.error(f"unknown engines {sorted(bad)}; choose from {', '.join(ENGINES)}")
    return args


def _create_postgres() -> tuple[str, str] | None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"citybroker_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError:
        return None
    finally:
        admin.dispose()
    return f"postgresql://postgres@127.0.0.1:5432/{name}", name


def _drop_postgres(name: str) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = console()
    terminate_on_sigterm()
    made = args.dir is None
    work = args.dir or Path(tempfile.mkdtemp(prefix="citybroker-bench-minimisation-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    runs: list[EngineRun] = []
    sqls: dict[str, str] = {}
    pg_name = None
    try:
        fed = sandbox.create(work / "federation", cities=(CITY,))
        consent_from = timefmt.to_db(timefmt.now() - timedelta(days=1))
        with out.status(f"generating {args.residents:,} residents and {args.trips:,} trips"):
            t0 = time.perf_counter()
            data = CityData(
                args.residents,
                args.trips,
                args.consent_share,
                args.withdrawn_share,
                args.seed,
                consent_from,
            )
            gen_s = time.perf_counter() - t0
        out.print(
            f"generated {args.residents:,} residents ({data.consenting:,} consenting, "
            f"{data.withdrawn:,} withdrawn) and {args.trips:,} trips in {gen_s:.1f} s; "
            f"work directory {work}"
        )
        for engine in args.engines:
            pg_url = None
            if engine == "postgresql":
                made_pg = _create_postgres()
                if made_pg is None:
                    out.print("[yellow]postgresql: server at 127.0.0.1:5432 not reachable, skipped")
                    runs.append(EngineRun(engine, error="PostgreSQL not reachable"))
                    continue
                pg_url, pg_name = made_pg
            try:
                run, sql = run_engine(
                    engine,
                    fed,
                    data,
                    work,
                    args.runs,
                    out,
                    pg_url,
                    args.stage_runs,
                    args.duckdb_limit,
                )
                runs.append(run)
                sqls[engine] = sql
            except Exception as e:  # one engine failing still reports the others
                out.print(f"[red]{engine} failed: {type(e).__name__}: {e}")
                runs.append(EngineRun(engine, error=f"{type(e).__name__}: {e}"))
            finally:
                if pg_name:
                    _drop_postgres(pg_name)
                    pg_name = None
                shutil.rmtree(work / engine, ignore_errors=True)
    finally:
        if pg_name:
            _drop_postgres(pg_name)
        if made:
            shutil.rmtree(work, ignore_errors=True)
    params: dict[str, Any] = {
        "benchmark": NAME,
        "query": QUERY_TEXT,
        "residents": args.residents,
        "trips": args.trips,
        "consenting": data.consenting,
        "withdrawn": data.withdrawn,
        "districts": len(DISTRICTS),
        "k": K,
        "runs": args.runs,
        "stage_runs": args.stage_runs,
        "statistic": "median of runs after one warm-up",
        "quick": args.quick,
        "load_average_before": [round(x, 2) for x in load_before],
        "duckdb": duckdb.__version__,
        "sqlalchemy": sa.__version__,
        **environment(),
    }
    figs = figures(runs, params, sqls)
    path = write_figures(args.out, figs)
    title = (
        f"{NAME}: {args.residents:,} residents ({data.consenting:,} consenting), "
        f"{args.trips:,} trips; median of {args.runs}"
    )
    report(out, runs, title)
    out.print(f"wrote {path} in {time.monotonic() - started:.0f} s in all")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
