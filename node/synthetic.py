"""Synthetic city data for demos, tests and benchmarks: residents' trips, nothing real.

Deterministic for a given seed, so runs are comparable.
"""

from __future__ import annotations

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
    sa.Column("trip_id", sa.Integer, primary_key=True),
    sa.Column("resident_id", sa.String(64), nullable=False, index=True),
    sa.Column("trip_date", sa.Date, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("district", sa.String(64), nullable=False),
    sa.Column("distance_km", sa.Float, nullable=False),
)

# The catalogue entry matching `trips`, in node config form.
MOBILITY_CATALOGUE = {
    "table": TRIPS_TABLE,
    "resident_column": "resident_id",
    "data_category": "mobility",
    "fields": {
        "trip_date": {"type": "date", "generalisations": ["day", "month", "year"]},
        "mode": {"type": "string"},
        "district": {"type": "string"},
        "distance_km": {"type": "number", "generalisations": ["", "band5", "band10"]},
    },
}


@dataclass(frozen=True)
class Resident:
    resident_id: str
    district: str


def residents(city: str, districts: tuple[str, ...], count: int, seed: int) -> list[Resident]:
    rng = random.Random(f"{seed}:{city}:residents")
    return [Resident(f"{city}-r{i:06d}", rng.choice(districts)) for i in range(count)]


def trip_rows(
    people: list[Resident], trips_each: int, start: date, days: int, seed: int
) -> Iterator[dict[str, object]]:
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


def load_trips(engine: sa.Engine, rows: Iterator[dict[str, object]], batch: int = 10_000) -> int:
    trips_metadata.create_all(engine)
    n = 0
    chunk: list[dict[str, object]] = []
    with engine.begin() as conn:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                conn.execute(trips.insert(), chunk)
                n += len(chunk)
                chunk = []
        if chunk:
            conn.execute(trips.insert(), chunk)
            n += len(chunk)
    return n
