"""The cell_key regime through QueryCompiler.run on SQLite, against the exact answer: released
values stay within the agreed bound, and the same cell gets the same answer however it is asked."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.agreement import CellKeyTerms, DominanceTerms
from domain.errors import InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from node import aggregate, regimes, synthetic
from tests.property.test_aggregate_props import (
    DATASET,
    NOW,
    PARTNER,
    PURPOSE,
    World,
    queries,
)
from tests.property.test_aggregate_props import world as aggregate_world

world = aggregate_world
RULE = DominanceTerms()
DATASET_COUNT = Measure(MeasureKind.COUNT_RECORDS)
DIMENSION = Dimension("mode")
SECRET = b"\x01" * 32


@pytest.fixture(scope="module", autouse=True)
def keyed(world: World) -> Iterator[None]:
    aggregate.key_consenting(world.engine, PURPOSE, "mobility")
    yield


def _answer(world: World, q: Query, k: int, cell_keys: bool) -> aggregate.AggregateResult | None:
    scan = aggregate.Scan(q, DATASET, (PARTNER,), NOW, cell_keys=cell_keys, dominance=RULE)
    with world.engine.connect() as conn:
        try:
            return aggregate.QueryCompiler().run(conn, scan, k)
        except (PermissionDenied, InvalidArgument):
            return None


def _perturbed(
    world: World, q: Query, terms: CellKeyTerms
) -> tuple[list[dict[str, Any]], aggregate.AggregateResult] | None:
    answer = _answer(world, q, terms.small_cell_threshold, cell_keys=True)
    if answer is None:
        return None
    return regimes.perturb_cells(answer.cells, q.measures, terms, SECRET), answer


terms_strategy = st.builds(
    CellKeyTerms, max_perturbation=st.integers(1, 5), small_cell_threshold=st.integers(1, 6)
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=queries(), terms=terms_strategy)
def test_within_the_bound_and_stable(world: World, q: Query, terms: CellKeyTerms) -> None:
    first = _perturbed(world, q, terms)
    exact = _answer(world, q, terms.small_cell_threshold, cell_keys=False)
    if first is None:
        assert exact is None
        return
    released, answer = first
    assert exact is not None
    # The same cells as the exact answer (keys only add a column), and the same again.
    assert [c.key for c in answer.cells] == [c.key for c in exact.cells]
    assert answer.withheld == exact.withheld
    again = _perturbed(world, q, terms)
    assert again is not None and again[0] == released
    for cell, truth in zip(released, exact.cells, strict=True):
        assert abs(cell["records"] - truth.records) <= terms.max_perturbation
        for m in q.measures:
            got, want = cell["values"][m.name], truth.values[m.name]
            if m.kind in (MeasureKind.COUNT_RECORDS, MeasureKind.COUNT_RESIDENTS):
                assert abs(got - want) <= terms.max_perturbation
                assert got >= terms.small_cell_threshold
            elif m.kind is MeasureKind.SUM:
                top = (truth.top or {}).get(m.field, 0.0)
                assert abs(got - want) <= top + 1e-6
            elif m.kind in (MeasureKind.MIN, MeasureKind.MAX):
                assert got == want


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mode=st.sampled_from(synthetic.MODES), terms=terms_strategy)
def test_same_cell_by_another_route_same_answer(
    world: World, mode: str, terms: CellKeyTerms
) -> None:
    """A cell of trips by mode, and the same residents' trips asked as a filter: one answer."""
    count = Query(dataset="mobility", purpose=PURPOSE, measures=(DATASET_COUNT,))
    grouped = dataclasses.replace(count, group_by=(DIMENSION,))
    filtered = dataclasses.replace(count, filters=(Filter("mode", FilterOp.IN, (mode,)),))
    by_group = _perturbed(world, grouped, terms)
    by_filter = _perturbed(world, filtered, terms)
    if by_group is None or by_filter is None:
        return
    cells = [c for c in by_group[0] if c["key"] == {"mode": mode}]
    if not cells or not by_filter[0]:
        return  # withheld by one route
    assert cells[0]["values"] == by_filter[0][0]["values"]
    assert cells[0]["records"] == by_filter[0][0]["records"]
