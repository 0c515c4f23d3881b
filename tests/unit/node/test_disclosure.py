"""disclosure.suppress and disclosure.recoverable on small tables worked out by hand."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import pytest

from node import disclosure

Key = tuple[str, ...]


def withheld_keys(keys: Sequence[Key], population: list[int], k: int) -> set[Key]:
    hidden = disclosure.suppress(keys, population, k)
    assert not disclosure.recoverable(keys, population, hidden, k)
    return {keys[i] for i in hidden}


def test_nothing_under_k_withholds_nothing() -> None:
    keys = [("a",), ("b",), ("c",)]
    assert disclosure.suppress(keys, [5, 6, 7], 5) == set()
    assert disclosure.suppress([], [], 5) == set()


def test_k_of_one_withholds_nothing() -> None:
    keys = [("a", "x"), ("a", "y"), ("b", "x")]
    assert disclosure.suppress(keys, [1, 1, 1], 1) == set()


def test_a_single_cell_under_k_is_withheld() -> None:
    assert disclosure.suppress([()], [3], 5) == {0}
    assert disclosure.suppress([("a",)], [3], 5) == {0}


def test_one_small_cell_takes_the_smallest_other_with_it() -> None:
    # Alone, "b" = total - a - c. The smallest released cell goes with it.
    keys = [("a",), ("b",), ("c",)]
    assert withheld_keys(keys, [20, 2, 9], 5) == {("b",), ("c",)}


def test_equal_populations_break_ties_by_key() -> None:
    keys = [("c",), ("a",), ("b",), ("d",)]
    assert withheld_keys(keys, [9, 9, 2, 9], 5) == {("a",), ("b",)}


def test_two_small_cells_that_together_reach_k_still_need_a_third() -> None:
    # With only a and b withheld, a + b = total - c = 5 is known, and each cell holds at least
    # one person, so a is at most 4 and b at most 3: the partner can tell both are under k. With
    # c withheld too, a (or b) could be as large as 35 - 2 = 33.
    keys = [("a",), ("b",), ("c",)]
    assert withheld_keys(keys, [3, 2, 30], 5) == {("a",), ("b",), ("c",)}
    assert disclosure.recoverable(keys, [3, 2, 30], {0, 1}, 5)


def test_two_small_cells_under_k_together_need_a_third() -> None:
    # b + c = 3 < 5 could be learnt from the total minus a: a is withheld as well.
    keys = [("a",), ("b",), ("c",)]
    assert withheld_keys(keys, [30, 1, 2], 5) == {("a",), ("b",), ("c",)}


def test_two_by_two_table_with_one_small_cell_withholds_all_four() -> None:
    # Rows and columns are margins a coarser query releases: one small cell in a 2x2 table can
    # only be protected by withholding every cell.
    keys = [("north", "bus"), ("north", "tram"), ("south", "bus"), ("south", "tram")]
    population = [2, 20, 30, 40]
    assert withheld_keys(keys, population, 5) == set(keys)
    # Before secondary suppression only the small cell was under k.
    assert {keys[i] for i, n in enumerate(population) if n < 5} == {("north", "bus")}


def test_three_by_three_table_with_one_small_cell() -> None:
    keys = [(r, c) for r in ("r0", "r1", "r2") for c in ("c0", "c1", "c2")]
    population = [1, 30, 40, 50, 60, 70, 80, 90, 35]
    hidden = withheld_keys(keys, population, 5)
    assert ("r0", "c0") in hidden
    # At least one more in the small cell's row and in its column, and the largest cells stay.
    assert any(r == "r0" and c != "c0" for r, c in hidden)
    assert any(c == "c0" and r != "r0" for r, c in hidden)
    assert ("r2", "c1") not in hidden
    assert len(hidden) < len(keys)


def test_a_sparse_table_has_only_the_margins_it_has() -> None:
    # ("b", "y") is alone in its row: that row's margin is itself, under k, so a coarser query
    # withholds it too. But coarser queries give it away whatever this answer withholds:
    # column y - (row a - column x) = 22 - (40 - 20) = 2, and each of those margins has at least
    # k people ("a", "x" is alone in column x). Withholding ("a", "y") as well would not help,
    # so it is released, and the cell counts as inherently exposed (not recoverable).
    keys = [("a", "x"), ("a", "y"), ("b", "y")]
    assert withheld_keys(keys, [20, 20, 2], 5) == {("b", "y")}


def test_three_dimensional_table() -> None:
    keys = [(a, b, c) for a in ("a0", "a1") for b in ("b0", "b1") for c in ("c0", "c1")]
    population = [3, 25, 30, 35, 40, 45, 50, 55]
    hidden = withheld_keys(keys, population, 5)
    assert ("a0", "b0", "c0") in hidden
    # Each of the small cell's three lines holds another withheld cell.
    for dim in range(3):
        others = [h for h in hidden if h != ("a0", "b0", "c0")]
        assert any(
            all(h[d] == keys[0][d] for d in range(3) if d != dim) and h[dim] != keys[0][dim]
            for h in others
        )


def test_recoverable_finds_a_lone_withheld_cell() -> None:
    keys = [("a",), ("b",), ("c",)]
    population = [20, 2, 9]
    assert disclosure.recoverable(keys, population, {1}, 5)
    assert not disclosure.recoverable(keys, population, {1, 2}, 5)
    assert not disclosure.recoverable(keys, population, set(), 5)
    assert not disclosure.recoverable(keys, population, {0, 1, 2}, 5)


def test_recoverable_finds_a_withheld_group_under_k() -> None:
    keys = [("a",), ("b",), ("c",)]
    assert disclosure.recoverable(keys, [30, 1, 2], {1, 2}, 5)
    assert not disclosure.recoverable(keys, [30, 1, 2], {0, 1, 2}, 5)


def test_recoverable_checks_every_margin_line() -> None:
    keys = [("north", "bus"), ("north", "tram"), ("south", "bus"), ("south", "tram")]
    population = [2, 20, 30, 40]
    # Row "north" and the total are covered, column "bus" is not.
    assert disclosure.recoverable(keys, population, {0, 1}, 5)
    assert not disclosure.recoverable(keys, population, {0, 1, 2, 3}, 5)


# ---- margins combined --------------------------------------------------------------------------


def _determined(n: int, lines: list[set[int]], cell: int) -> bool:
    """Whether `cell` (of n unknowns) follows exactly from the sums over `lines`: its unit vector
    lies in the row space (exact rational elimination)."""
    rows = [[Fraction(int(j in line)) for j in range(n)] for line in lines]
    return _rank(rows) == _rank([*rows, [Fraction(int(j == cell)) for j in range(n)]])


def _rank(rows: list[list[Fraction]]) -> int:
    m = [r[:] for r in rows]
    rank = 0
    for c in range(len(m[0]) if m else 0):
        pivot = next((i for i in range(rank, len(m)) if m[i][c] != 0), None)
        if pivot is None:
            continue
        m[rank], m[pivot] = m[pivot], m[rank]
        for i in range(len(m)):
            if i != rank and m[i][c] != 0:
                f = m[i][c] / m[rank][c]
                m[i] = [a - f * b for a, b in zip(m[i], m[rank], strict=True)]
        rank += 1
    return rank


def test_no_small_cell_follows_from_margins_combined() -> None:
    """4x4 table, k = 2, one resident in (r1, c3). Line-by-line suppression (every row and
    column with none or at least two withheld cells adding up to k) left it recoverable as
    x(r1,c3) = C3 - R2 - R3 + C0 over the withheld cells, every one of those margins having at
    least k people. No withheld cell may follow from the known margins combined."""
    rows, cols = ("r0", "r1", "r2", "r3"), ("c0", "c1", "c2", "c3")
    keys = [(r, c) for r in rows for c in cols]
    population = [38, 2, 2, 24, 22, 2, 2, 1, 2, 9, 29, 2, 13, 33, 31, 6]
    k = 2
    hidden = disclosure.suppress(keys, population, k)
    assert not disclosure.recoverable(keys, population, hidden, k)
    order = sorted(hidden)
    lines = [
        {order.index(i) for i in margin if i in hidden}
        for margin in disclosure.margins(keys)
        if sum(population[i] for i in margin) >= k
    ]
    lines = [line for line in lines if line]
    small = keys.index(("r1", "c3"))
    assert small in hidden
    for cell in hidden:
        assert not _determined(len(order), lines, order.index(cell))


def test_margins_cover_every_set_of_dimensions_summed_over() -> None:
    keys = [("a", "x"), ("a", "y"), ("b", "y")]
    assert set(disclosure.margins(keys)) == {
        frozenset({0, 1}),  # row a
        frozenset({2}),  # row b: the one cell (b, y)
        frozenset({0}),  # column x
        frozenset({1, 2}),  # column y
        frozenset({0, 1, 2}),  # the grand total
    }
    assert disclosure.margins([]) == []


def test_a_table_too_large_to_audit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the audit's size bound the answer fails closed: nothing is released (the node refuses
    # the query), and anything less than withholding every cell counts as recoverable.
    monkeypatch.setattr(disclosure, "_LARGEST", 1)
    keys = [(r, c) for r in ("r0", "r1", "r2") for c in ("c0", "c1", "c2")]
    population = [1, 30, 40, 50, 60, 70, 80, 90, 35]
    with pytest.raises(disclosure.TooLargeToAudit, match="9 cells, 1 of them under k"):
        disclosure.suppress(keys, population, 5)
    assert disclosure.recoverable(keys, population, {0, 1, 3, 4}, 5)
    assert not disclosure.recoverable(keys, population, set(range(len(keys))), 5)
    # Nothing under k needs no audit at all.
    assert disclosure.suppress(keys, [n + 5 for n in population], 5) == set()
