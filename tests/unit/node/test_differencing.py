"""The differencing guard's rule (node.differencing), as a pure function."""

from __future__ import annotations

from pyroaring import BitMap

from node.differencing import CellSet, Earlier, exposes, guard, size_windows

K = 10


def cell(members: range | list[int], records: int | None = None, signature: int = 0) -> CellSet:
    bitmap = BitMap(members)
    return CellSet(bitmap, len(bitmap) if records is None else records, signature)


def test_a_superset_by_fewer_than_k_exposes_the_difference() -> None:
    assert exposes(cell(range(100)), cell(range(97)), K)
    assert exposes(cell(range(97)), cell(range(100)), K)
    assert exposes(cell(range(100)), cell(range(91)), K)


def test_sets_differing_by_k_or_more_do_not() -> None:
    assert not exposes(cell(range(100)), cell(range(90)), K)
    assert not exposes(cell(range(100)), cell(range(50, 150)), K)


def test_a_small_symmetric_difference_exposes_even_without_containment() -> None:
    # Same size: the pre-filter lets it through; 2 + 2 members differ.
    assert exposes(cell(range(2, 102)), cell(range(100)), K)
    assert not exposes(cell(range(5, 105)), cell(range(100)), K)  # 5 + 5 = k


def test_equal_cells_expose_nothing() -> None:
    assert not exposes(cell(range(100), 300, 7), cell(range(100), 300, 7), K)


def test_same_residents_with_other_records_expose() -> None:
    """A record filter that keeps every resident (distance at least 0.5 km) still subtracts."""
    assert exposes(cell(range(100), 300, 7), cell(range(100), 299, 5), K)
    assert exposes(cell(range(100), 300, 7), cell(range(100), 300, 8), K)


def test_size_windows_merge_and_clip() -> None:
    assert size_windows([], K) == []
    assert size_windows([5], K) == [(0, 14)]
    assert size_windows([100, 105, 200], K) == [(91, 114), (191, 209)]


def test_earlier_near_is_the_size_pre_filter() -> None:
    cells = [cell(range(n)) for n in (10, 50, 91, 100, 109, 110, 500)]
    near = Earlier(cells).near(100, K)
    assert sorted(c.size for c in near) == [91, 100, 109]


def test_guard_returns_the_exposed_new_cells() -> None:
    earlier = Earlier([cell(range(100)), cell(range(1000, 1500))])
    new = [cell(range(103)), cell(range(1000, 1400)), cell(range(1000, 1497)), cell(range(90))]
    assert guard(new, earlier, K) == {0, 2}
    assert guard(new, Earlier([]), K) == set()


def test_guard_agrees_with_exposes_pair_by_pair() -> None:
    """Many small cells near each other: the guard withholds exactly the cells that some earlier
    cell exposes."""
    import random

    rng = random.Random(7)
    universe = list(range(200))

    def random_cell() -> CellSet:
        members = rng.sample(universe, rng.randint(10, 40))
        return cell(members, len(members) + rng.randint(0, 1), rng.randint(0, 1))

    earlier = [random_cell() for _ in range(300)]
    base = earlier[:20]
    near_copies = [
        CellSet(BitMap(list(c.members)[rng.randint(0, 5) :]), c.records, c.signature) for c in base
    ]
    new = [random_cell() for _ in range(50)] + near_copies
    expected = {i for i, c in enumerate(new) if any(exposes(c, old, K) for old in earlier)}
    assert guard(new, Earlier(earlier), K) == expected
    assert expected  # the near copies are there to be found
