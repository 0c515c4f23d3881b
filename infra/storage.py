"""Database engines and migrations. SQLite (WAL, fully synchronous) for a node's and a broker's own
database by default; PostgreSQL via psycopg 3; DuckDB files for a node's datasets."""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from domain.errors import ConfigError, StoreError
from infra import private_files
from infra.config import Section

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DUCKDB_PREFIX = "duckdb:///"
_MEMORY = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", re.IGNORECASE)


class ManualCheckpoints:
    """Whether a SQLite engine's connections are checked out with WAL autocheckpoint off (while a
    bulk import copies the WAL itself: node.consent_import.checkpoints), and back to SQLite's
    default when checked in. Its listeners are added when the engine is created and never
    removed: SQLAlchemy's event dispatch is not safe against listeners added or removed while
    other threads check connections out."""

    DEFAULT_PAGES = 1000  # SQLite's own wal_autocheckpoint, which connections otherwise keep

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0

    def hold(self) -> None:
        """Connections checked out from now on have autocheckpoint off, until `release`."""
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        """One `hold` fewer; with none left, connections are checked out as SQLite has them."""
        with self._lock:
            self._holders -= 1

    def checkout(self, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        """The pool's checkout event: autocheckpoint off while held."""
        if self._holders:
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
            record.info[_AUTOCHECKPOINT_OFF] = True

    def checkin(self, dbapi_conn: Any, record: Any) -> None:
        """The pool's checkin event: SQLite's default back on a connection that had it off."""
        if record.info.pop(_AUTOCHECKPOINT_OFF, False):
            dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={self.DEFAULT_PAGES}")


_AUTOCHECKPOINT_OFF = "citybroker_autocheckpoint_off"
_MANUAL_CHECKPOINTS: weakref.WeakKeyDictionary[sa.Engine, ManualCheckpoints] = (
    weakref.WeakKeyDictionary()
)


def manual_checkpoints(engine: sa.Engine) -> ManualCheckpoints | None:
    """The switch of a SQLite engine made by `create_engine`; None for any other engine."""
    return _MANUAL_CHECKPOINTS.get(engine)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we reply, which the log's durability rule needs.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


# DuckDB has no to_char; the query compiler generalises dates with PostgreSQL's to_char formats on
# every engine but SQLite, so each DuckDB connection gets those formats (and only those) as a macro.
_DUCKDB_TO_CHAR = """CREATE OR REPLACE TEMP MACRO to_char(t, f) AS CASE f
    WHEN 'YYYY-MM-DD' THEN strftime(t, '%Y-%m-%d')
    WHEN 'YYYY-MM' THEN strftime(t, '%Y-%m')
    WHEN 'YYYY' THEN strftime(t, '%Y')
    WHEN 'IYYY-"W"IW' THEN strftime(t, '%G-W%V')
    ELSE error('to_char: format ' || f || ' is not supported') END"""


def _duckdb_macros(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute(_DUCKDB_TO_CHAR)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for any other URL and for an in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def _owner_only_duckdb(path: Path) -> Callable[[Any, Any], None]:
    """A connect hook for a DuckDB file opened for writing: DuckDB creates the file itself (it
    refuses an empty one made beforehand), so its mode is tightened once it exists."""

    def tighten(_dbapi_conn: Any, _record: Any) -> None:
        private_files.make_private(path)
        private_files.make_private(Path(f"{path}.wal"))

    return tighten


@dataclass(frozen=True)
class DuckDBSettings:
    """How a node opens a DuckDB data file (the `[duckdb]` table of its config).

    DuckDB's own defaults (80% of the machine's memory, a thread per core) suit a database server,
    not a node answering beside its other work: these bound the memory DuckDB's buffer manager
    takes (measured node peaks per setting: README, Storage engines).

    One thread by default: each thread keeps partial aggregates of its own (a distinct-count hash
    table per thread), and the consent mirror (node.aggregate) lives in the same buffer memory.
    Measured 2026-12-04 on the minimisation benchmark's query (1,000,000 residents, 3,000,000 trips,
    DuckDB 2.0.1, 2-CPU machine): with 2 threads the aggregate fails with DuckDB's Out of Memory
    error at 100MB and at 128MB, on the raw SQL and on the node's own path (mirror, 73 MiB of
    buffer memory once loaded, plus aggregate) alike; it needs about 160MB, and a test process
    (190 MB idle) then peaked at 370-380 MB. With 1 thread it runs at 80MB and 100MB (same test
    process: 290-310 MB; the node in the benchmark: 323 and 338 MB) and fails at 64MB; 100MB keeps
    a margin.
    """

    # DuckDB's buffer memory, such as "100MB" or "1GiB" (DuckDB's own default: 80% of the RAM).
    memory_limit: str = "100MB"
    # DuckDB's worker threads (DuckDB's own default: one per core).
    threads: int = 1

    @classmethod
    def from_config(cls, section: Section) -> DuckDBSettings:
        """Settings from a `[duckdb]` table, defaults for absent keys; ConfigError for any invalid value."""
        memory_limit = section.str("memory_limit", cls.memory_limit)
        threads = section.int("threads", cls.threads)
        if not _MEMORY.fullmatch(memory_limit):
            raise ConfigError(
                f"{section.path}: {section.prefix}memory_limit must be a size such as "
                f"'100MB' or '1GiB', not {memory_limit!r}"
            )
        if threads < 1:
            raise ConfigError(f"{section.path}: {section.prefix}threads must be at least 1")
        return cls(memory_limit, threads)

    def config(self) -> dict[str, str | int]:
        """The DuckDB connection `config`: memory_limit and threads."""
        return {"memory_limit": self.memory_limit, "threads": self.threads}


def create_engine(
    url: str, read_only: bool = False, duckdb: DuckDBSettings | None = None
) -> sa.Engine:
    """An engine for `url`. `read_only` and `duckdb` apply to DuckDB files only (a writer such as
    a loader opens one read-write; DuckDB then lets no other process open it)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        private_files.create_private_file(sqlite_file)  # -wal and -shm take its mode
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(
                url, connect_args={"check_same_thread": False}, pool_size=16, max_overflow=16
            )
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            switch = _MANUAL_CHECKPOINTS[engine] = ManualCheckpoints()
            sa.event.listen(engine, "checkout", switch.checkout)
            sa.event.listen(engine, "checkin", switch.checkin)
        elif url.startswith("duckdb"):
            args: dict[str, Any] = {"read_only": read_only}
            if duckdb is not None:
                args["config"] = duckdb.config()
            # Few connections: each keeps its own temporary table of consenting residents (the
            # consent push, node.aggregate) in DuckDB's memory, and one query already runs on all
            # of DuckDB's threads, so more connections would add memory, not speed.
            # No overflow: an overflow connection is closed when returned, and with it its
            # consent mirror, which the next one then reloaded whole on the answer path (at
            # concurrency 8, 16 % of a node's CPU per query, bench/profile_federated.py). A query beyond
            # the eighth waits for a pooled connection instead, its mirror up to date.
            engine = sa.create_engine(url, connect_args=args, pool_size=8, max_overflow=0)
            # duckdb_engine leaves SQLAlchemy's compiled-statement cache off (it has not
            # certified it), so every execution compiled its statement again: most of a small
            # query's CPU (bench/profile_federated.py). Its statement compiler is PostgreSQL's,
            # which is cache-safe (it renders no parameter values into the SQL); only identifier
            # quoting and types differ.
            engine.dialect._supports_statement_cache = True
            sa.event.listen(engine, "connect", _duckdb_macros)
            data_file = duckdb_path(url)
            if data_file is not None and not read_only:
                sa.event.listen(engine, "connect", _owner_only_duckdb(data_file))
        else:
            engine = sa.create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise StoreError(
            f"cannot use database {url!r}: {e}", reason="DATABASE_URL_INVALID"
        ) from None
    return engine


def alembic_config(engine: sa.Engine) -> Config:
    """An Alembic config for this package's migrations, bound to `engine`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Migrates the database up to `revision`; StoreError (DATABASE_UNAVAILABLE) on an OperationalError."""
    try:
        command.upgrade(alembic_config(engine), revision)
    except sa.exc.OperationalError as e:
        raise StoreError(
            f"cannot migrate database: {e.orig}", reason="DATABASE_UNAVAILABLE"
        ) from None


def downgrade(engine: sa.Engine, revision: str = "base") -> None:
    """Migrates the database down to `revision` (by default every migration undone); errors not mapped."""
    command.downgrade(alembic_config(engine), revision)


def duckdb_path(url: str) -> Path | None:
    """The file of a DuckDB URL; None for any other URL (and for an in-memory DuckDB)."""
    if not url.startswith(DUCKDB_PREFIX):
        return None
    rest = url.removeprefix(DUCKDB_PREFIX).split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def default_data_url(database: str) -> str:
    """Where a node's datasets live when its config names no `data` URL: a DuckDB file beside a
    SQLite node database (SQLite for the transactional consents, agreements and log; DuckDB for
    aggregating datasets, 8x faster on the minimisation benchmark), else the node database."""
    if database.startswith("sqlite:///"):
        file = database.removeprefix("sqlite:///").split("?", 1)[0]
        if file and file != ":memory:":
            return DUCKDB_PREFIX + str(Path(file).with_suffix(".duckdb"))
    return database


def _display(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def open_data(
    url: str, tables: Mapping[str, tuple[str, frozenset[str]]], duckdb: DuckDBSettings
) -> sa.Engine:
    """A node's data source, checked before the node serves: reachable, and holding every
    dataset's table (`tables`: dataset → table and the columns the catalogue names). DuckDB files
    open read-only, bounded by `duckdb`; the node writes nothing there but temporary tables."""
    path = duckdb_path(url)
    if path is not None and not path.is_file():
        raise StoreError(
            f"the data file {path} does not exist: load the city's datasets into it (a DuckDB "
            "file), or set `data` in the node config to the database that holds them",
            reason="DATA_SOURCE_MISSING",
        )
    engine = create_engine(url, read_only=True, duckdb=duckdb)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as e:
        engine.dispose()
        message = str(e.orig).splitlines()[0]
        if path is not None and "lock" in message.lower():
            raise StoreError(
                f"the data file {path} is in use by another process that writes to it (a loader "
                f"still running?); the node opens it read-only once the writer has finished: "
                f"{message}",
                reason="DATA_SOURCE_LOCKED",
            ) from None
        raise StoreError(
            f"cannot open the data source {_display(url)}: {message}",
            reason="DATA_SOURCE_UNAVAILABLE",
        ) from None
    try:
        check_tables(engine, tables)
    except StoreError:
        engine.dispose()
        raise
    return engine


def check_tables(engine: sa.Engine, tables: Mapping[str, tuple[str, frozenset[str]]]) -> None:
    """Every dataset's table exists with the columns the catalogue names: a wrong schema is a
    start-up error, not a failure of every query."""
    where = _display(str(engine.url))
    for dataset, (table, columns) in sorted(tables.items()):
        try:
            # A connection each: a failed statement leaves PostgreSQL's transaction aborted.
            with engine.connect() as conn:
                empty = sa.select(sa.text("*")).select_from(sa.table(table)).limit(0)
                names = set(map(str.lower, conn.execute(empty).keys()))
        except sa.exc.DBAPIError as e:
            raise StoreError(
                f"dataset {dataset}: cannot read table {table!r} in {where}: "
                f"{str(e.orig).splitlines()[0]}",
                reason="DATA_SCHEMA_MISMATCH",
            ) from None
        missing = sorted(c for c in columns if c.lower() not in names)
        if missing:
            raise StoreError(
                f"dataset {dataset}: table {table!r} in {where} has no column "
                + ", ".join(repr(c) for c in missing),
                reason="DATA_SCHEMA_MISMATCH",
            )
