"""disclosure.suppress over random 1-4 dimensional tables (dense or sparse), populations and k,
checked against naive independent oracles: exact rational elimination for what the known margins
determine, and a linear programme per item for the protection intervals."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog  # type: ignore[import-untyped]

from node import disclosure

Key = tuple[str, ...]
Table = tuple[list[Key], list[int], int]


@st.composite
def tables(
    draw: st.DrawFn, sides: tuple[int, ...] = (4, 4, 4), least: tuple[int, ...] = ()
) -> Table:
    """Distinct keys over up to len(sides) dimensions (at least len(least)), between least[d]
    (else 1) and sides[d] values in dimension d, a full cross product or any part of it; a
    population per cell, and k."""
    width = draw(st.integers(max(1, len(least)), len(sides)))
    low = [*least, *[1] * len(sides)]
    sizes = [draw(st.integers(low[d], sides[d])) for d in range(width)]
    every = [
        tuple(f"d{d}v{v}" for d, v in enumerate(t)) for t in itertools.product(*map(range, sizes))
    ]
    if draw(st.booleans()):
        keys = every
    else:
        present = draw(st.lists(st.booleans(), min_size=len(every), max_size=len(every)))
        keys = [key for key, there in zip(every, present, strict=True) if there] or every[:1]
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


SETTINGS = settings(max_examples=200, deadline=None)
LARGER = settings(max_examples=40, deadline=None)


# ---- oracles, written independently of node.disclosure ------------------------------------------


def _margins(keys: list[Key]) -> list[frozenset[int]]:
    """For each non-empty set of dimensions summed over, the cells agreeing on the others."""
    width = len(keys[0]) if keys else 0
    out: set[frozenset[int]] = set()
    for n in range(1, width + 1):
        for summed in itertools.combinations(range(width), n):
            groups: dict[Key, set[int]] = defaultdict(set)
            for i, key in enumerate(keys):
                groups[tuple(v for d, v in enumerate(key) if d not in summed)].add(i)
            out.update(frozenset(g) for g in groups.values())
    return sorted(out, key=sorted)


class _Span:
    """Row echelon form, in exact rationals, of 0/1 rows given as sets of columns. Every row's
    first column is its pivot, so a vector lies in the span iff eliminating its first column
    over and over empties it."""

    def __init__(self, rows: Iterable[Iterable[int]]) -> None:
        self.pivots: dict[int, dict[int, Fraction]] = {}
        for row in rows:
            rest = self._reduce(row)
            if rest:
                p = min(rest)
                self.pivots[p] = {c: v / rest[p] for c, v in rest.items()}

    def _reduce(self, cells: Iterable[int]) -> dict[int, Fraction]:
        row = {c: Fraction(1) for c in cells}
        while row and (c := min(row)) in self.pivots:
            f = row[c]
            for d, v in self.pivots[c].items():
                row[d] = row.get(d, Fraction(0)) - f * v
                if not row[d]:
                    del row[d]
        return row

    def contains(self, cells: Iterable[int]) -> bool:
        return not self._reduce(cells)


def _items(
    keys: list[Key], population: list[int], hidden: set[int], k: int
) -> list[frozenset[int]]:
    """What must stay unknown: each withheld cell, and each margin under k all of it withheld."""
    small = [
        m
        for m in _margins(keys)
        if len(m) > 1 and sum(population[i] for i in m) < k and m <= hidden
    ]
    return [frozenset({i}) for i in sorted(hidden)] + small


def _determined(table: Table, hidden: set[int]) -> list[frozenset[int]]:
    """The items an exact linear combination of the known margins (those with at least k people)
    gives away, except those given away even with every cell withheld (inherent)."""
    keys, population, k = table
    known = [m for m in _margins(keys) if sum(population[i] for i in m) >= k]
    now = _Span(m & hidden for m in known)
    always = _Span(known)
    return [
        m for m in _items(keys, population, hidden, k) if now.contains(m) and not always.contains(m)
    ]


def _extreme(table: Table, hidden: set[int], item: frozenset[int], sign: float) -> float:
    """The item's largest (sign 1) or smallest (sign -1) value over the tables the partner cannot
    rule out: withheld cells at least 1 (0 where the population is 0), every known margin kept."""
    keys, population, k = table
    cells = sorted(hidden)
    rows = [m for m in _margins(keys) if sum(population[i] for i in m) >= k and m & hidden]
    a = np.asarray([[float(c in m) for c in cells] for m in rows]).reshape(len(rows), len(cells))
    result = linprog(
        [-sign * float(c in item) for c in cells],
        A_eq=a if len(rows) else None,
        b_eq=[float(sum(population[c] for c in m & hidden)) for m in rows] if len(rows) else None,
        bounds=[(min(1, population[c]), None) for c in cells],
        method="highs",
    )
    if result.status == 3:
        return sign * float("inf")
    assert result.status == 0
    return sign * float(-result.fun)


def _pinned(table: Table, hidden: set[int]) -> list[frozenset[int]]:
    """The items whose protection interval is too narrow (a cell under k or a margin under k that
    cannot reach k, a withheld cell that cannot move by 1), except those for which it is too
    narrow even with every cell withheld."""
    keys, population, k = table
    everything = set(range(len(keys)))

    def narrow(item: frozenset[int], withheld: set[int]) -> bool:
        true = sum(population[i] for i in item)
        if true < k:
            return _extreme(table, withheld, item, 1.0) < k - 1e-6
        up = _extreme(table, withheld, item, 1.0)
        return up < true + 1 - 1e-6 and _extreme(table, withheld, item, -1.0) > true - 1 + 1e-6

    return [
        m
        for m in _items(keys, population, hidden, k)
        if narrow(m, hidden) and not narrow(m, everything)
    ]


# ---- properties -------------------------------------------------------------------------------


@SETTINGS
@given(tables())
def test_no_released_cell_is_under_k(table: Table) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    assert all(population[i] >= k for i in range(len(keys)) if i not in hidden)
    assert hidden <= set(range(len(keys)))


@SETTINGS
@given(tables())
def test_no_withheld_cell_or_small_margin_follows_from_the_known_margins(table: Table) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    assert not disclosure.recoverable(keys, population, hidden, k)
    assert _determined(table, hidden) == []


@SETTINGS
@given(tables())
def test_every_withheld_cell_and_small_margin_keeps_its_protection_interval(table: Table) -> None:
    keys, population, k = table
    assert _pinned(table, disclosure.suppress(keys, population, k)) == []


@LARGER
@given(tables(sides=(6, 6, 4), least=(3, 3, 2)))
def test_larger_tables_pass_the_oracle(table: Table) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    assert all(population[i] >= k for i in range(len(keys)) if i not in hidden)
    assert _determined(table, hidden) == []


@settings(max_examples=10, deadline=None)
@given(tables(sides=(6, 6, 4), least=(3, 3, 2)))
def test_larger_tables_keep_their_protection_intervals(table: Table) -> None:
    keys, population, k = table
    assert _pinned(table, disclosure.suppress(keys, population, k)) == []


@LARGER
@given(tables(sides=(3, 3, 2, 2), least=(2, 2, 2, 2)))
def test_four_dimensional_tables_pass_the_oracles(table: Table) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    assert _determined(table, hidden) == []
    assert _pinned(table, hidden) == []


@SETTINGS
@given(tables())
def test_suppression_contains_primary_suppression(table: Table) -> None:
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    primary = {i for i, n in enumerate(population) if n < k}
    assert primary <= hidden
    if not primary:
        assert hidden == set()  # secondary suppression only ever protects a primary cell


@SETTINGS
@given(tables())
def test_idempotent(table: Table) -> None:
    """Suppressing what was released withholds nothing more, and the withheld set is closed:
    auditing it again finds nothing that withholding more could protect."""
    keys, population, k = table
    hidden = disclosure.suppress(keys, population, k)
    shown = [i for i in range(len(keys)) if i not in hidden]
    assert disclosure.suppress([keys[i] for i in shown], [population[i] for i in shown], k) == set()
    assert not disclosure.recoverable(keys, population, hidden, k)


@SETTINGS
@given(tables(), st.data())
def test_deterministic_whatever_the_row_order(table: Table, data: st.DataObject) -> None:
    """The same table gives the same withheld cells, every time and in whatever order the
    database returns its rows (SQLite and PostgreSQL may sort keys differently)."""
    keys, population, k = table
    first = {keys[i] for i in disclosure.suppress(keys, population, k)}
    assert {keys[i] for i in disclosure.suppress(list(keys), list(population), k)} == first
    order = data.draw(st.permutations(range(len(keys))))
    shuffled = disclosure.suppress([keys[j] for j in order], [population[j] for j in order], k)
    assert {keys[order[i]] for i in shuffled} == first
