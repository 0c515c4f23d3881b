"""node.dominance: the (n, k%) rule, and its statement against a naive computation."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from domain.agreement import DominanceTerms
from node import dominance
from node.dominance import Contributions, dominated

RULE = DominanceTerms(n=2, percent=85.0)


@pytest.mark.parametrize(
    ("total", "top_n", "expected"),
    [(100.0, 86.0, True), (100.0, 85.0, False), (100.0, 50.0, False), (0.0, 0.0, False)],
)
def test_rule(total: float, top_n: float, expected: bool) -> None:
    assert dominated(Contributions(total, top_n, top_n), RULE) is expected


def _table(conn: sa.Connection, rows: list[tuple[str, str, float | None]]) -> sa.Table:
    t = sa.Table(
        "trips",
        sa.MetaData(),
        sa.Column("mode", sa.String),
        sa.Column("resident_id", sa.String),
        sa.Column("distance_km", sa.Float),
    )
    t.create(conn)
    conn.execute(
        t.insert(),
        [dict(zip(("mode", "resident_id", "distance_km"), r, strict=True)) for r in rows],
    )
    return t


@pytest.mark.parametrize("per_resident", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_statement_matches_a_naive_computation(per_resident: bool, seed: int) -> None:
    rng = random.Random(seed)
    rows = [
        (rng.choice("ab"), f"r{rng.randrange(6)}", rng.choice([None, rng.uniform(-5, 40)]))
        for _ in range(40)
    ]
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        t = _table(conn, rows)
        stmt = dominance.top_contributions(
            t,
            [],
            [t.c.mode],
            t.c.resident_id if per_resident else None,
            {"distance_km": t.c.distance_km},
            2,
        )
        got = dominance.read(conn.execute(stmt).mappings().all(), 1, ["distance_km"])
    for mode in "ab":
        contributions: dict[object, float] = {}
        for i, (m, r, v) in enumerate(rows):
            if m == mode:
                who = r if per_resident else i
                contributions[who] = contributions.get(who, 0.0) + (v or 0.0)
        sizes = sorted((abs(v) for v in contributions.values()), reverse=True)
        c = got[(mode,)]["distance_km"]
        assert c.total == pytest.approx(sum(sizes))
        assert c.top_n == pytest.approx(sum(sizes[:2]))
        assert c.largest == pytest.approx(sizes[0])


def test_statement_without_group_by() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        t = _table(conn, [("a", "r1", 90.0), ("a", "r2", 5.0), ("b", "r3", 5.0)])
        stmt = dominance.top_contributions(
            t, [], [], t.c.resident_id, {"distance_km": t.c.distance_km}, 1
        )
        got = dominance.read(conn.execute(stmt).mappings().all(), 0, ["distance_km"])
    assert got[()]["distance_km"] == Contributions(100.0, 90.0, 90.0)
    assert dominated(got[()]["distance_km"], DominanceTerms(1, 85.0))
