"""Synthetic city data for demos, tests and benchmarks: residents' trips, nothing real.

Deterministic for a given seed, so runs are comparable.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa

MODES = ("bus", "tram", "bike", "walk", "car")
TRIPS_TABLE = "mobility_trips"

trips_metadata = sa.MetaData()
trips = sa.Table(
    TRIPS_TABLE,
    trips_metadata,
    # Ids always come with the rows (DuckDB has no SERIAL for an autoincrementing key).
    sa.Column("trip_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("resident_id", sa.String(64), nullable=False, index=True),
    sa.Column("trip_date", sa.Date, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("district", sa.String(64), nullable=False),
    sa.Column("distance_km", sa.Double, nullable=False),  # DuckDB FLOAT is single precision
)

# The catalogue entry matching `trips`, in node config form.
MOBILITY_CATALOGUE = {
    "table": TRIPS_TABLE,
    "resident_column": "resident_id",
    "data_category": "mobility",
    "fields": {
        "trip_date": {"type": "date", "generalisations": ["day", "week", "month", "year"]},
        "mode": {"type": "string"},
        "district": {"type": "string"},
        "distance_km": {"type": "number", "generalisations": ["", "band5", "band10"]},
    },
}


TRAFFIC_TABLE = "traffic_counts"
traffic = sa.Table(
    TRAFFIC_TABLE,
    trips_metadata,
    sa.Column("observation_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("camera_id", sa.String(32), nullable=False),
    sa.Column("district", sa.String(64), nullable=False),
    sa.Column("observed_on", sa.Date, nullable=False),
    sa.Column("hour", sa.Integer, nullable=False),
    sa.Column("vehicles", sa.Integer, nullable=False),
    sa.Column("cyclists", sa.Integer, nullable=False),
)

# Observational data from public space (hourly camera counts): no resident id, no consent filter;
# agreements and minimisation still apply, and k counts observations.
TRAFFIC_CATALOGUE = {
    "kind": "observational",
    "table": TRAFFIC_TABLE,
    "data_category": "location",
    "fields": {
        "district": {"type": "string"},
        "observed_on": {"type": "date", "generalisations": ["day", "week", "month"]},
        "hour": {"type": "number", "generalisations": ["", "band5"]},
        "vehicles": {"type": "number"},
        "cyclists": {"type": "number"},
    },
}


def traffic_rows(
    districts: tuple[str, ...], cameras_per_district: int, start: date, days: int, seed: int
) -> Iterator[dict[str, object]]:
    """Traffic counts per camera, day and hour (6 to 21); the same arguments give the same rows."""
    rng = random.Random(f"{seed}:traffic")
    n = 0
    for district in districts:
        for camera in range(cameras_per_district):
            for day in range(days):
                for hour in range(6, 22):
                    n += 1
                    rush = 3 if hour in (7, 8, 16, 17) else 1
                    yield {
                        "observation_id": n,
                        "camera_id": f"{district[:3].lower()}-{camera}",
                        "district": district,
                        "observed_on": start + timedelta(days=day),
                        "hour": hour,
                        "vehicles": rng.randint(20, 120) * rush,
                        "cyclists": rng.randint(0, 40) * rush,
                    }


def load_traffic(engine: sa.Engine, rows: Iterator[dict[str, object]]) -> int:
    """Insert `rows` into the traffic table (created if absent) in one transaction; the row count."""
    return _load(engine, traffic, rows)


RESIDENTS_TABLE = "residents"
residents_table = sa.Table(
    RESIDENTS_TABLE,
    trips_metadata,
    sa.Column("resident_id", sa.String(64), primary_key=True),
    sa.Column("age", sa.Integer, nullable=False),
    sa.Column("district", sa.String(64), nullable=False),
)

# One row per resident: for attribute checks ("is 65 or older") and pseudonymised releases.
RESIDENTS_CATALOGUE = {
    "table": RESIDENTS_TABLE,
    "resident_column": "resident_id",
    "data_category": "age",
    "fields": {
        "age": {"type": "number", "generalisations": ["", "band5", "band10"]},
        "district": {"type": "string"},
    },
}


@dataclass(frozen=True)
class Resident:
    resident_id: str
    district: str

    @property
    def age(self) -> int:
        """A stable synthetic age from 16 to 95."""
        return 16 + int(hashlib.sha256(self.resident_id.encode()).hexdigest()[:8], 16) % 80


def residents(city: str, districts: tuple[str, ...], count: int, seed: int) -> list[Resident]:
    """`count` residents with ids `<city>-r000000`…, districts drawn from `districts`; same seed,
    same list."""
    rng = random.Random(f"{seed}:{city}:residents")
    return [Resident(f"{city}-r{i:06d}", rng.choice(districts)) for i in range(count)]


def trip_rows(
    people: list[Resident], trips_each: int, start: date, days: int, seed: int
) -> Iterator[dict[str, object]]:
    """Each person's trips (1 to 2*trips_each-1), dated within `days` days from `start`;
    the same arguments give the same rows."""
    rng = random.Random(f"{seed}:trips")
    trip_id = 0
    for r in people:
        for _ in range(rng.randint(1, 2 * trips_each - 1)):
            trip_id += 1
            yield {
                "trip_id": trip_id,
                "resident_id": r.resident_id,
                "trip_date": start + timedelta(days=rng.randrange(days)),
                "mode": rng.choices(MODES, weights=(30, 20, 15, 25, 10))[0],
                "district": r.district,
                "distance_km": round(rng.uniform(0.3, 25.0), 1),
            }


def load_residents(engine: sa.Engine, people: list[Resident]) -> int:
    """Insert one residents row per person (created if absent) in one transaction; the row count."""
    return _load(
        engine,
        residents_table,
        iter({"resident_id": r.resident_id, "age": r.age, "district": r.district} for r in people),
    )


def load_trips(engine: sa.Engine, rows: Iterator[dict[str, object]], batch: int = 10_000) -> int:
    """Insert `rows` into the trips table (created if absent) in one transaction, `batch` rows per
    statement; the row count."""
    return _load(engine, trips, rows, batch)


def create_tables(engine: sa.Engine) -> None:
    """The synthetic datasets' tables, empty (a node checks at start-up that they exist)."""
    trips_metadata.create_all(engine)


def _insert(conn: sa.Connection, table: sa.Table, chunk: list[dict[str, object]]) -> None:
    if conn.dialect.name == "duckdb":
        # DuckDB runs an executemany row by row; one list per column, unnested side by side,
        # inserts the chunk in one statement.
        names = list(chunk[0])
        conn.execute(
            sa.text(
                f"INSERT INTO {table.name} ({', '.join(names)}) "
                f"SELECT {', '.join(f'unnest(:{n})' for n in names)}"
            ),
            {n: [row[n] for row in chunk] for n in names},
        )
    else:
        conn.execute(table.insert(), chunk)


def _load(
    engine: sa.Engine, table: sa.Table, rows: Iterator[dict[str, object]], batch: int = 10_000
) -> int:
    create_tables(engine)
    n = 0
    chunk: list[dict[str, object]] = []
    with engine.begin() as conn:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                _insert(conn, table, chunk)
                n += len(chunk)
                chunk = []
        if chunk:
            _insert(conn, table, chunk)
            n += len(chunk)
    return n
