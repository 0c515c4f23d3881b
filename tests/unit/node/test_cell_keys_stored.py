"""Residents' cell keys (regime cell_key): drawn once and kept, and summed per cell inside the
aggregate's own statement, whether the data lies beside the consents or elsewhere (the consent
mirror carries the keys; on DuckDB also in the one-scan path that numbers the rows)."""

from __future__ import annotations

import sqlalchemy as sa

from domain.query import Dimension, Measure, MeasureKind, Query
from keys import timefmt
from node import aggregate, synthetic
from node.cell_key import KEY_RANGE
from node.consent import ConsentRegistry
from node.schema import resident_cell_keys
from tests.unit.node.test_consent_mirror import DATASET, PARTNER, PEOPLE, PURPOSE, split

__all__ = ["split"]
BY_MODE = Query("mobility", PURPOSE, (Measure(MeasureKind.COUNT_RECORDS),), (Dimension("mode"),))


def _expected(consents: sa.Engine, data: sa.Engine) -> dict[str, int]:
    """Each mode's sum of its trips' residents' keys, by brute force, over the consenting."""
    with consents.connect() as conn:
        keys = {r: k for r, k in conn.execute(sa.select(resident_cell_keys))}
    consenting = {p.resident_id for p in PEOPLE[:10]}
    out: dict[str, int] = {}
    with data.connect() as conn:
        trips = sa.select(synthetic.trips.c.mode, synthetic.trips.c.resident_id)
        for mode, resident in conn.execute(trips):
            if resident in consenting:
                out[mode] = out.get(mode, 0) + keys[resident]
    return out


def _key_sums(
    conn: sa.Connection, consents: sa.Engine, compiler: aggregate.QueryCompiler
) -> dict[str, int | None]:
    at = timefmt.now()
    pushed = conn.engine is not consents
    if pushed:
        aggregate.push_consenting(conn, consents, PURPOSE, (PARTNER,), "mobility", at)
    else:
        aggregate.key_consenting(consents, PURPOSE, "mobility")
    scan = aggregate.Scan(BY_MODE, DATASET, (PARTNER,), at, pushed=pushed, cell_keys=True)
    return {c.key["mode"]: c.key_sum for c in compiler.run(conn, scan, k=1).cells}


def test_keys_are_summed_in_the_statement_and_fixed(
    split: tuple[sa.Engine, sa.Engine, ConsentRegistry],
) -> None:
    consents, data, _ = split
    compiler = aggregate.QueryCompiler()
    with data.connect() as conn:
        first = _key_sums(conn, consents, compiler)
        # Again: on DuckDB this time in the one scan that also numbers the rows.
        second = _key_sums(conn, consents, compiler)
    assert first == second == _expected(consents, data)
    with consents.connect() as conn:
        keys = conn.execute(sa.select(resident_cell_keys.c.cell_key)).scalars().all()
    assert len(keys) == 10 and all(0 <= k < KEY_RANGE for k in keys)
    assert len(set(keys)) > 1  # random, not one value for all


def test_beside_the_consents_keys_are_drawn_before_the_query(
    split: tuple[sa.Engine, sa.Engine, ConsentRegistry],
) -> None:
    consents, _, _ = split
    synthetic.load_trips(consents, synthetic.trip_rows(PEOPLE, 3, timefmt.now().date(), 5, seed=5))
    with consents.connect() as conn:
        sums = _key_sums(conn, consents, aggregate.QueryCompiler())
    assert sums == _expected(consents, consents)
