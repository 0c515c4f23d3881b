"""disclosure.suppress over random 1-3 dimensional tables (dense or sparse), populations and k."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from node import disclosure

Key = tuple[str, ...]


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[Key], list[int], int]:
    """Distinct keys over 1-3 dimensions (a full cross product or any part of it), a population
    per cell, and k."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    every = [
        tuple(f"d{d}v{v}" for d, v in enumerate(t)) for t in itertools.product(*map(range, sizes))
    ]
    dense = draw(st.booleans())
    keys = every if dense else draw(st.lists(st.sampled_from(every), min_size=1, unique=True))
    k = draw(st.integers(1, 15))
    # Mostly around k, so that primary and secondary suppression both have work to do.
    population = draw(
        st.lists(
            st.one_of(st.integers(0, k + 2), st.integers(0, 60)),
            min_size=len(keys),
            max_size=len(keys),
        )
    )
    return keys, population, k


SETTINGS = settings(max_examples=300, deadline=None)


@SETTINGS
@given(tables())
def test_no_released_cell_is_under_k(table: tuple[list[Key], list[int], int]) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    assert all(population[i] >= k for i in range(len(keys)) if i not in hidden)
    assert hidden <= set(range(len(keys)))


@SETTINGS
@given(tables())
def test_no_withheld_cell_is_recoverable_from_a_margin_or_the_total(
    table: tuple[list[Key], list[int], int],
) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    assert not disclosure.recoverable(keys, population, hidden, k)
    # The same check done by hand on the grand total: nothing or >= 2 cells with >= k people.
    if hidden and len(hidden) < len(keys):
        assert len(hidden) >= 2 and sum(population[i] for i in hidden) >= k


@SETTINGS
@given(tables())
def test_suppression_contains_primary_suppression(
    table: tuple[list[Key], list[int], int],
) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    primary = {i for i, n in enumerate(population) if n < k}
    assert primary <= hidden
    if not primary:
        assert hidden == set()  # secondary suppression only ever protects a primary cell


@SETTINGS
@given(tables())
def test_idempotent(table: tuple[list[Key], list[int], int]) -> None:
    """Suppressing what was released withholds nothing more, and the withheld set is closed:
    starting secondary suppression from it (every line already safe) would add no cell."""
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    shown = [i for i in range(len(keys)) if i not in hidden]
    assert disclosure.suppress([keys[i] for i in shown], [population[i] for i in shown], k) == set()
    for line in disclosure._lines(keys):  # the margins suppress works over
        withheld = [i for i in line if i in hidden]
        if withheld and len(withheld) < len(line):
            assert len(withheld) >= 2 and sum(population[i] for i in withheld) >= k


@SETTINGS
@given(tables(), st.data())
def test_deterministic_whatever_the_row_order(
    table: tuple[list[Key], list[int], int], data: st.DataObject
) -> None:
    """The same table gives the same withheld cells, every time and in whatever order the
    database returns its rows (SQLite and PostgreSQL may sort keys differently)."""
    keys, population, k = table
    first = {keys[i] for i in disclosure.suppress(keys, population, k)}
    assert {keys[i] for i in disclosure.suppress(list(keys), list(population), k)} == first
    order = data.draw(st.permutations(range(len(keys))))
    shuffled = disclosure.suppress([keys[j] for j in order], [population[j] for j in order], k)
    assert {keys[order[i]] for i in shuffled} == first
