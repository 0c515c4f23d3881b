"""The differencing guard of the `exact` regime: a pure function, no I/O.

What it stops. Two cells released to one partner, each of k or more people, can still give away
a small group by subtraction: the city total minus the same total over every district but one is
that district; (small district ∪ big district) by mode minus big district by mode is the small
district by mode. Secondary suppression (node.disclosure) audits one answer's own margins; this
guard audits a new answer against every cell the partner already received under the same
agreement (all its versions) and dataset (node.release_history keeps them).

The rule. Each cell is described by its contributors (`CellSet.members`: resident numbers; for
observational data, where records are the unit, record ids) and its records (`records`, and
`signature`: a sum of the records' hashes, node.cell_sets). A new cell exposes a group, and is
withheld, when for some earlier cell:

- their contributor sets differ by 1 to k-1 (the symmetric difference: one may contain the other,
  or each may hold a few the other lacks); or
- their contributors are the same but their records are not (a record-level filter that keeps
  every resident, such as "distance at least 0.5 km"). The records that differ then belong to an
  unknown number of these residents, possibly one, so the cell is withheld.

Why that suffices. Subtracting two cells reveals the records in one and not the other; the people
those records belong to include every resident in the symmetric difference of the contributor
sets. So when that difference is k or more, the subtracted group has k or more people, as any
released cell does; when it is 0 and the records are the same, the cells are equal and nothing is
learnt. Record identity is a hash of the row's catalogued columns (identical rows, always filtered
alike, count once), so two record sets are told apart by their count and hash sum, wrong only on a
collision of that sum (about 2^-31). Sets of fewer than k contributors are never released at all.

The pre-filter. Sets whose sizes differ by k or more differ by at least k members, so only earlier
cells within k-1 of a new cell's size are compared: they are found by bisection in the earlier
cells sorted by size (node.release_history selects only those from its index, too).

Not covered: a released cell against a sum of several earlier cells. A finer answer's secondary
suppression treats each of its margins of k or more as known (a total beside the same query
grouped is protected that way, in either order); sums across several answers are not checked.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyroaring import BitMap


@dataclass(frozen=True)
class CellSet:
    """Who and what went into one cell: contributors as numbers, and its records' count and hash
    sum (node.cell_sets). `size`: how many contributors (residents, or records of observational
    data)."""

    members: BitMap
    records: int
    signature: int
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.members))


def exposes(new: CellSet, earlier: CellSet, k: int) -> bool:
    """Whether releasing `new` beside `earlier` lets a partner isolate 1 to k-1 people by
    subtraction (see the module docstring)."""
    if abs(new.size - earlier.size) >= k:
        return False
    differ = new.members.symmetric_difference_cardinality(earlier.members)
    if differ >= k:
        return False
    if differ > 0:
        return True
    return (new.records, new.signature) != (earlier.records, earlier.signature)


class Earlier:
    """The cells a partner already holds, sorted by size, for the size pre-filter."""

    def __init__(self, cells: Sequence[CellSet]) -> None:
        self._cells = sorted(cells, key=lambda c: c.size)
        self._sizes = [c.size for c in self._cells]

    def __len__(self) -> int:
        return len(self._cells)

    def near(self, size: int, k: int) -> Sequence[CellSet]:
        """The earlier cells whose sizes are within k-1 of `size`: the only ones that can be."""
        lo = bisect.bisect_left(self._sizes, size - k + 1)
        return self._cells[lo : bisect.bisect_right(self._sizes, size + k - 1)]

    def exposed(self, cell: CellSet, k: int) -> bool:
        """Whether `cell` exposes a group against some earlier cell: `exposes`, inlined (this
        loop is the guard's cost; `near` did the size test). A comparison of two cells is one
        roaring symmetric-difference count, under a microsecond for small cells."""
        members, records = cell.members, (cell.records, cell.signature)
        for old in self.near(cell.size, k):
            differ = members.symmetric_difference_cardinality(old.members)
            if differ < k and (differ > 0 or records != (old.records, old.signature)):
                return True
        return False

    def holds(self, cell: CellSet) -> bool:
        """Whether an earlier cell is identical to `cell` (same contributors and records): one
        the partner already holds, so recording it again would add nothing the guard can use
        (every comparison with the copy gives what the comparison with the original gives)."""
        records = (cell.records, cell.signature)
        return any(
            records == (old.records, old.signature) and old.members == cell.members
            for old in self.near(cell.size, 1)
        )


def size_windows(sizes: Sequence[int], k: int) -> list[tuple[int, int]]:
    """The ranges [size-k+1, size+k-1] of `sizes`, merged where they overlap, in order: the
    earlier cells that can matter to cells of these sizes."""
    windows: list[tuple[int, int]] = []
    for size in sorted(sizes):
        lo, hi = max(size - k + 1, 0), size + k - 1
        if windows and lo <= windows[-1][1] + 1:
            windows[-1] = (windows[-1][0], max(windows[-1][1], hi))
        else:
            windows.append((lo, hi))
    return windows


def guard(new: Sequence[CellSet], earlier: Earlier, k: int) -> set[int]:
    """Indexes of the `new` cells to withhold: those that expose a group against an earlier
    cell. Cells of one answer are not compared with each other (secondary suppression audits
    those)."""
    return {i for i, cell in enumerate(new) if earlier.exposed(cell, k)}
