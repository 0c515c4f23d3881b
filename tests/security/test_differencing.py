"""Differencing past k: two answers that each pass k and secondary suppression, subtracted, give
away a small district's figures (issue 12, "What broke" 1). Through the broker's partner API only,
on a federation with the demo agreement (k = 10, regime exact), where three of Aurora's consenting
residents live in a district of their own. Each test asserts that the partner cannot learn the
small district's figures; without the differencing guard (node.release_guard) each one does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge.partner_client import Answer
from tests.conftest import PURPOSE, RunningFederation

CITY = "aurora"
SMALL = "Smallfield"
TRIPS = Measure(MeasureKind.COUNT_RECORDS)
KM = Measure(MeasureKind.SUM, "distance_km")
Values = dict[str, float]


@dataclass(frozen=True)
class City:
    """Aurora with a small district: its districts, the biggest other one, and its database."""

    rf: RunningFederation
    districts: tuple[str, ...]
    big: str
    database: str

    def ask(self, group_by: tuple[Dimension, ...] = (), *filters: Filter) -> Answer:
        query = Query("mobility", PURPOSE, (TRIPS, KM), group_by, tuple(filters), cities=(CITY,))
        with self.rf.partner() as client:
            return client.query(query)

    def truth(self, where: str, columns: tuple[str, ...] = ()) -> dict[tuple[str, ...], Values]:
        """Trips and kilometres of Aurora's consenting residents' rows matching `where`, by
        `columns` (SQL expressions)."""
        ids = [r.resident_id for r in self.rf.consenting[CITY]]
        group_by = ", ".join(columns)
        select = f"{group_by}, " if group_by else ""
        sql = (
            f"SELECT {select}count(*), sum(distance_km) FROM mobility_trips WHERE {where} "
            f"AND resident_id IN ({','.join('?' * len(ids))})"
            + (f" GROUP BY {group_by}" if group_by else "")
        )
        with sqlite3.connect(self.database) as db:
            rows = db.execute(sql, ids).fetchall()
        width = len(columns)
        return {
            tuple(str(v) for v in r[:width]): {
                TRIPS.name: r[width],
                KM.name: round(r[width + 1], 6),
            }
            for r in rows
            if r[width]
        }


@pytest.fixture
def city(fresh_federation: RunningFederation) -> Iterator[City]:
    """Three consenting residents of Aurora move to a district of their own."""
    rf = fresh_federation
    database = str(rf.fed.cities[CITY].database)
    with sqlite3.connect(database) as db:
        # Three who travel by bus, so that every attack below has something to find.
        consenting = [r.resident_id for r in rf.consenting[CITY]]
        movers = [
            r
            for (r,) in db.execute(
                "SELECT DISTINCT resident_id FROM mobility_trips WHERE mode = 'bus' "
                f"AND resident_id IN ({','.join('?' * len(consenting))}) ORDER BY resident_id",
                consenting,
            )
        ][:3]
        db.execute(
            f"UPDATE mobility_trips SET district = ? WHERE resident_id IN ({','.join('?' * 3)})",
            [SMALL, *movers],
        )
        sizes = db.execute(
            "SELECT district, count(DISTINCT resident_id) FROM mobility_trips WHERE district != ? "
            f"AND resident_id IN ({','.join('?' * len(consenting))}) GROUP BY district "
            "ORDER BY 2 DESC",
            [SMALL, *consenting],
        ).fetchall()
    districts = tuple(d for d, _ in sizes)
    yield City(rf, (*districts, SMALL), districts[0], database)


def _released(answer: Answer) -> dict[tuple[str, ...], Values]:
    return {tuple(c.key.values()): dict(c.values) for c in answer.cells if not c.withheld}


def _learned(
    more: dict[tuple[str, ...], Values], less: dict[tuple[str, ...], Values]
) -> dict[tuple[str, ...], Values]:
    """What subtracting `less` from `more`, cell by cell, tells the partner."""
    return {
        key: {n: round(v - less[key][n], 6) for n, v in values.items()}
        for key, values in more.items()
        if key in less
    }


def _leaks(
    learned: dict[tuple[str, ...], Values], truth: dict[tuple[str, ...], Values]
) -> list[tuple[str, ...]]:
    """The small group's cells the partner derived exactly."""
    return [
        key
        for key, values in learned.items()
        if key in truth and all(abs(v - truth[key][n]) < 1e-3 for n, v in values.items())
    ]


def test_city_total_minus_every_district_but_one(city: City) -> None:
    total = city.ask()
    others = city.ask((), Filter("district", FilterOp.IN, city.districts[:-1]))
    small = city.truth(f"district = '{SMALL}'")
    learned = _learned(_released(total), _released(others))
    assert not _leaks(learned, small), "the small district's trips and km were derived"
    assert [(c.status, c.reason) for c in others.cities] == [("refused", "DIFFERENCING_RISK")]


@pytest.mark.parametrize(
    ("group_by", "columns"),
    [
        ((Dimension("mode"),), ("mode",)),
        (
            (Dimension("mode"), Dimension("trip_date", "month")),
            ("mode", "strftime('%Y-%m', trip_date)"),
        ),
    ],
    ids=["by-mode", "by-mode-and-month"],
)
def test_small_and_big_minus_big_grouped(
    city: City, group_by: tuple[Dimension, ...], columns: tuple[str, ...]
) -> None:
    both = city.ask(group_by, Filter("district", FilterOp.IN, (SMALL, city.big)))
    big = city.ask(group_by, Filter("district", FilterOp.IN, (city.big,)))
    assert _released(both), "the first answer releases cells"
    small = city.truth(f"district = '{SMALL}'", columns)
    learned = _learned(_released(both), _released(big))
    assert not _leaks(learned, small), "the small district's cells were derived"


def test_small_and_big_minus_big_filters_only(city: City) -> None:
    mode = "bus"
    only = Filter("mode", FilterOp.EQUALS, (mode,))
    both = city.ask((), Filter("district", FilterOp.IN, (SMALL, city.big)), only)
    big = city.ask((), Filter("district", FilterOp.IN, (city.big,)), only)
    assert _released(both), "the first answer releases its cell"
    small = city.truth(f"district = '{SMALL}' AND mode = '{mode}'")
    learned = _learned(_released(both), _released(big))
    assert not _leaks(learned, small), "the small district's trips by this mode were derived"
