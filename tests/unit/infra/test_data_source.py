"""A node's data source: the DuckDB default beside the node database, opened read-only with bounded
memory, and every way it can be wrong at start-up a clear error."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from domain.errors import ConfigError, StoreError
from infra import storage
from infra.config import Section
from infra.storage import DuckDBSettings
from node import synthetic

TRIPS = {"mobility": (synthetic.TRIPS_TABLE, frozenset({"resident_id", "mode", "trip_date"}))}


def _settings(**values: object) -> DuckDBSettings:
    return DuckDBSettings.from_config(Section(dict(values), Path("node.toml"), "duckdb."))


@pytest.fixture
def city(tmp_path: Path) -> Path:
    """A DuckDB data file holding a few synthetic trips."""
    path = tmp_path / "aurora.duckdb"
    engine = storage.create_engine(f"duckdb:///{path}")
    people = synthetic.residents("aurora", ("Harbour", "Old Town"), 20, seed=1)
    synthetic.load_trips(engine, synthetic.trip_rows(people, 3, date(2026, 8, 1), 30, seed=1))
    engine.dispose()
    return path


@pytest.fixture
def opened(city: Path) -> Iterator[sa.Engine]:
    engine = storage.open_data(f"duckdb:///{city}", TRIPS, DuckDBSettings())
    yield engine
    engine.dispose()


@pytest.mark.parametrize(
    ("database", "data"),
    [
        ("sqlite:////srv/city/aurora.db", "duckdb:////srv/city/aurora.duckdb"),
        ("sqlite:////srv/city/node", "duckdb:////srv/city/node.duckdb"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql://node@db/aurora", "postgresql://node@db/aurora"),
    ],
)
def test_default_data_is_a_duckdb_file_beside_a_sqlite_node_database(
    database: str, data: str
) -> None:
    assert storage.default_data_url(database) == data


def test_a_relative_duckdb_file_is_relative_to_the_config(tmp_path: Path) -> None:
    s = Section({"data": "duckdb:///data/aurora.duckdb"}, tmp_path / "node.toml")
    assert s.database_url("data") == f"duckdb:///{(tmp_path / 'data/aurora.duckdb').resolve()}"
    assert storage.duckdb_path(s.database_url("data")) == tmp_path / "data" / "aurora.duckdb"
    assert storage.duckdb_path("duckdb:///:memory:") is None
    assert storage.duckdb_path("sqlite:////x.db") is None


def test_settings_default_and_override() -> None:
    assert _settings() == DuckDBSettings("100MB", 1)
    assert _settings(memory_limit="1.5GiB", threads=8) == DuckDBSettings("1.5GiB", 8)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"memory_limit": "lots"}, "duckdb.memory_limit"),
        ({"memory_limit": "100"}, "duckdb.memory_limit"),
        ({"memory_limit": 100}, "duckdb.memory_limit"),
        ({"threads": 0}, "duckdb.threads"),
        ({"threads": "2"}, "duckdb.threads"),
    ],
)
def test_bad_settings_name_the_key(values: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _settings(**values)


def test_the_node_opens_duckdb_read_only_with_bounded_memory(opened: sa.Engine) -> None:
    with opened.connect() as conn:
        limit, threads, mode = conn.execute(
            sa.text(
                "SELECT current_setting('memory_limit'), current_setting('threads'), "
                "current_setting('access_mode')"
            )
        ).one()
        assert (threads, mode) == (1, "read_only")
        assert limit.endswith("MiB") and 90 < float(limit.split()[0]) <= 100  # 100 MB in MiB
        # The consent push needs a temporary table; nothing else may be written.
        conn.execute(sa.text("CREATE TEMPORARY TABLE pushed (resident_id VARCHAR)"))
        with pytest.raises(sa.exc.DBAPIError, match="read-only"):
            conn.execute(sa.text("CREATE TABLE written (x INTEGER)"))


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("YYYY-MM-DD", "2027-01-01"),
        ("YYYY-MM", "2027-01"),
        ("YYYY", "2027"),
        ('IYYY-"W"IW', "2026-W53"),  # 1 January 2027 lies in the last ISO week of 2026
    ],
)
def test_duckdb_connections_know_the_date_formats_the_compiler_uses(
    opened: sa.Engine, fmt: str, expected: str
) -> None:
    with opened.connect() as conn:
        got = conn.execute(sa.select(sa.func.to_char(sa.literal(date(2027, 1, 1)), fmt)))
        assert got.scalar_one() == expected


def test_any_other_date_format_fails_rather_than_answering_wrongly(opened: sa.Engine) -> None:
    with opened.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="not supported"):
        conn.execute(sa.select(sa.func.to_char(sa.literal(date(2027, 1, 1)), "HH24")))


def test_a_missing_data_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as e:
        storage.open_data(f"duckdb:///{tmp_path / 'none.duckdb'}", TRIPS, DuckDBSettings())
    assert e.value.reason == "DATA_SOURCE_MISSING"
    assert "none.duckdb does not exist" in e.value.message
    assert "`data`" in e.value.message


def test_a_file_that_is_not_duckdb(tmp_path: Path) -> None:
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database\n" * 1000)
    with pytest.raises(StoreError) as e:
        storage.open_data(f"duckdb:///{junk}", TRIPS, DuckDBSettings())
    assert e.value.reason == "DATA_SOURCE_UNAVAILABLE"
    assert "junk.duckdb" in e.value.message


def test_a_file_locked_by_a_writer(city: Path) -> None:
    """DuckDB lets one process write a file and no other open it meanwhile (a loader still
    running): the node says so, and opens it once the writer is gone."""
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, duckdb
                conn = duckdb.connect({str(city)!r})
                print("open", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "open"
        with pytest.raises(StoreError) as e:
            storage.open_data(f"duckdb:///{city}", TRIPS, DuckDBSettings())
        assert e.value.reason == "DATA_SOURCE_LOCKED"
        assert str(city) in e.value.message and "read-only" in e.value.message
    finally:
        writer.communicate("", timeout=30)
    storage.open_data(f"duckdb:///{city}", TRIPS, DuckDBSettings()).dispose()


def test_a_missing_table_names_the_dataset_and_table(city: Path) -> None:
    tables = {**TRIPS, "traffic": ("camera_counts", frozenset({"district"}))}
    with pytest.raises(StoreError) as e:
        storage.open_data(f"duckdb:///{city}", tables, DuckDBSettings())
    assert e.value.reason == "DATA_SCHEMA_MISMATCH"
    assert "dataset traffic" in e.value.message and "'camera_counts'" in e.value.message


def test_a_missing_column_is_named(city: Path) -> None:
    tables = {"mobility": (synthetic.TRIPS_TABLE, frozenset({"mode", "fare", "zone"}))}
    with pytest.raises(StoreError, match="has no column 'fare', 'zone'") as e:
        storage.open_data(f"duckdb:///{city}", tables, DuckDBSettings())
    assert e.value.reason == "DATA_SCHEMA_MISMATCH"


def test_the_schema_check_covers_data_in_the_node_database(tmp_path: Path) -> None:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    synthetic.create_tables(engine)
    try:
        storage.check_tables(engine, TRIPS)
        with pytest.raises(StoreError, match="has no column 'fare'"):
            storage.check_tables(
                engine, {"mobility": (synthetic.TRIPS_TABLE, frozenset({"mode", "fare"}))}
            )
    finally:
        engine.dispose()


def test_duckdb_loads_the_same_rows_as_sqlite(city: Path, tmp_path: Path) -> None:
    """The demo's loader takes DuckDB's one-statement path; the rows (and full-precision
    distances) are those the executemany path writes to SQLite."""
    sqlite = storage.create_engine(f"sqlite:///{tmp_path / 'same.db'}")
    people = synthetic.residents("aurora", ("Harbour", "Old Town"), 20, seed=1)
    synthetic.load_trips(sqlite, synthetic.trip_rows(people, 3, date(2026, 8, 1), 30, seed=1))
    duck = storage.create_engine(f"duckdb:///{city}")
    stmt = sa.select(synthetic.trips).order_by(synthetic.trips.c.trip_id)
    try:
        with sqlite.connect() as a, duck.connect() as b:
            rows = a.execute(stmt).all()
            assert rows and rows == b.execute(stmt).all()
    finally:
        sqlite.dispose()
        duck.dispose()


def test_a_node_config_without_data_reads_the_duckdb_file_beside_its_database(
    tmp_path: Path,
) -> None:
    from cli import sandbox
    from node.config import NodeConfig

    fed = sandbox.create(tmp_path / "fed")
    layout = fed.cities["aurora"]
    config = NodeConfig.load(layout.config)
    assert (config.data, config.duckdb) == (f"duckdb:///{layout.data}", DuckDBSettings())
    text = layout.config.read_text()
    explicit = tmp_path / "node.toml"
    explicit.write_text(
        'data = "duckdb:///elsewhere.duckdb"\n' + text + '\n[duckdb]\nmemory_limit = "1GB"\n'
    )
    config = NodeConfig.load(explicit)
    assert config.data == f"duckdb:///{(tmp_path / 'elsewhere.duckdb').resolve()}"
    assert config.duckdb == DuckDBSettings("1GB", 1)
