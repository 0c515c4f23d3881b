"""Statistical disclosure control for aggregate answers. Pure functions, no I/O.

What a partner learns about one answer. The released cells, every measure of each; the keys of
the withheld cells (so which cells exist, each holding at least one person); and every margin of
the table (sums over the cells that agree on some of the group-by values, down to the grand
total) whose population reaches k, because a coarser query releases it. Margins under k are
withheld by that coarser query, so they are protected here as well.

Primary suppression withholds every cell with fewer than k people (distinct residents, or records
for observational data). Secondary suppression then audits the answer against that knowledge and
withholds more cells next to each exposure until:

1. no withheld cell, and no margin under k, is a linear function of what is known: its indicator
   vector over the withheld cells is outside the row space of the known margins restricted to the
   withheld cells. This holds for every additive measure at once (records, residents, sums),
   since it depends only on which cells are withheld, and a cell is withheld for all its measures;
2. with every present cell at least 1 (0 where the population is 0), every withheld cell can take
   another value at least 1 away from its own, and every cell or margin under k can reach k, so the
   partner cannot even tell that it is small. These bounds are computed for the population as an
   additive count; a feasible table that moves the population also moves the record counts, which
   are at least as large.

Method. Cells are put in key order first, and every choice breaks ties by population, then key, so
the same table gives the same answer whatever the order of its rows. The partner's equations split
into independent blocks: connected components of the withheld cells linked by known margins, once
every margin that is, over the withheld cells, a sum of finer known margins is dropped (the grand
total, say, when every row meeting a withheld cell is known). (1) is a rank test per block: an
orthonormal basis of the row space from an eigendecomposition (numpy) of the block's 0/1 margin
matrix times its transpose, on the smaller side; an item is determined when its squared distance
from that space is under 1e-7 (measured: below 1e-14 for determined items, above 1e-2 for the
others; eigenvalues kept are above 1e-4 of the largest, those dropped below 1e-15). (2) is linear
programming with HiGHS (`scipy.optimize.linprog`): programmes maximising the sum of everything still
in doubt, over all blocks at once, settle most items; every optimum is kept as a witness table
(withholding more only widens what is feasible, so witnesses stay valid as suppression grows); what
they leave gets programmes of its own, exact up to HiGHS's tolerance (1e-7, results trusted to 1e-6).

Secondary suppression works in rounds, on every exposure at once. Where the table lies on a grid, an
exposed cell gets the rest of the cheapest hypercube of present cells around it (fewest new cells,
then fewest people), preferably one whose corners leave it room to move enough: adding t to the
corners an even number of steps from the cell and taking t from the others keeps every margin.
Otherwise (a sparse table, a margin under k) it gets one partner: for an exact exposure the
smallest released cell breaking the combination of margins that gives it away, for a bound the
smallest in the margin through it with the least room; such an exposure next to a partner of the
same round waits for the next round. An exposure the programmes leave is taken to be real and gets
its hypercube without a programme of its own to prove it (it nearly always is real); `recoverable`
proves it. An item exposed even with every cell withheld cannot be protected by any answer to this
query: determined (for example, the total minus a row when the row's other cells have no other
margin: a rank test of the whole table, unless a hypercube of present cells around a cell shows it
is not), or pinned (a single known margin caps it under k, or a programme over the whole table). It
is still withheld, but counts as inherently exposed and is not chased.

Limits. The rank test is floating point: sound for these 0/1 matrices, with the gaps above, but not
a proof. The bounds are those of the rational relaxation: for three or more dimensions, integrality
can narrow an interval further (for one and two dimensions the margins form a totally unimodular
system, so the relaxation is exact). Distinct-resident margins are not additive; a margin is taken as
released when its cells' populations add up to k, which over-estimates what the partner knows. Sums
of a numeric field are covered by (1), not (2). Coarser generalisations (a 10-year band is two
5-year bands) and filtered queries give other sums of cells that are not modelled here; disclosure
across such queries is what the differencing rules and differential privacy are for. Cost: a dense
20 x 5 x 31 table (3,100 cells) takes about 1.5 s with a quarter of its cells under k=10, 3 s with
half; 40 x 5 x 31, about 5 s (one core). The rank test's cost grows with the cube of a block's
smaller side, so a block with more than 2,500 margins and cells on its smaller side (or whose basis
would take more than 100 MB) is not audited: the table fails closed. `suppress` then raises
TooLargeToAudit (the node refuses the query: group by fewer or coarser dimensions), and
`recoverable` reports exposure unless every cell is withheld. A dense 20 x 5 x 31 x 2 table with a
quarter under k is already past that.

scipy (HiGHS, sparse matrices) is imported on the first table that has a cell under k: it adds
about 40 MB to a process, which a node answering only large cells never pays.
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt

Key = tuple[str, ...]
# What must stay unknown: a withheld cell, or a margin under k, as its cell indexes in order.
Item = tuple[int, ...]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]
Sparse = Any  # scipy.sparse matrices carry no type information

_SINGULAR = 1e-9  # Gram eigenvalues below this fraction of the largest are zero
_KNOWN = 1e-7  # squared distance from the row space below which an item is determined
_SLACK = 1e-6  # how far a linear programme's optimum is trusted (HiGHS works to 1e-7)
_WEIGHT = 1e-9  # a margin combination's weight on a cell below this is zero
_GRID = 1 << 20  # largest cross product of the dimensions searched for hypercubes
# Largest block audited: its Gram matrix's side (an eigendecomposition of 2,500 x 2,500 takes
# about 3 s on one core), and that times the block's cells (the basis kept: 100 MB at most).
_LARGEST = 2500
_WIDEST = 5000


def _groups(keys: Sequence[Key]) -> list[tuple[tuple[int, ...], list[list[int]]]]:
    """For each non-empty set of dimensions summed over, the groups of cell indexes that agree on
    the others, in order."""
    width = len(keys[0]) if keys else 0
    out: list[tuple[tuple[int, ...], list[list[int]]]] = []
    for n in range(1, width + 1):
        for summed in itertools.combinations(range(width), n):
            kept = [d for d in range(width) if d not in summed]
            groups: dict[Key, list[int]] = defaultdict(list)
            for i, key in enumerate(keys):
                groups[tuple(key[d] for d in kept)].append(i)
            out.append((summed, list(groups.values())))
    return out


def margins(keys: Sequence[Key]) -> list[frozenset[int]]:
    """Index sets of every margin: for each non-empty set of dimensions summed over, the cells
    that agree on the others (the grand total included). Duplicates are dropped."""
    seen: dict[frozenset[int], None] = {}
    for _, groups in _groups(keys):
        for group in groups:
            seen.setdefault(frozenset(group), None)
    return list(seen)


class TooLargeToAudit(Exception):
    """The table is too large for the audit within the time and memory it may take (see the
    module's limits): nothing of it can be released."""


def suppress(
    keys: Sequence[Key], population: Sequence[int], k: int, primary: Collection[int] = ()
) -> set[int]:
    """Indexes of the cells to withhold. The same table gives the same cells whatever the order
    of its rows. `primary`: cells (by index) withheld whatever their population (a dominated
    sum, say), protected by secondary suppression like a cell under k. Raises TooLargeToAudit
    past the audit's size bound."""
    if not primary and all(n >= k for n in population):
        return set()
    audit, order = _Audit.sorted(keys, population, k)
    hidden = audit.population < k
    forced = set(primary)
    hidden[[r for r, i in enumerate(order) if i in forced]] = True
    try:
        while added := audit.round(hidden):
            hidden[added] = True
    except _TooLarge:
        raise TooLargeToAudit(
            f"{len(keys)} cells, {int((audit.population < k).sum())} of them under k"
        ) from None
    return {order[r] for r in np.flatnonzero(hidden).tolist()}


def recoverable(keys: Sequence[Key], population: Sequence[int], withheld: set[int], k: int) -> bool:
    """True if some withheld cell, or margin under k, is exposed (determined, pinned to one value,
    or shown to be under k) in a way that withholding more cells could prevent. For a table too
    large to audit, true unless every cell is withheld."""
    audit, order = _Audit.sorted(keys, population, k)
    hidden = np.zeros(len(order), dtype=np.bool_)
    hidden[[r for r, i in enumerate(order) if i in withheld]] = True
    try:
        return bool(audit.round(hidden, first=True))
    except _TooLarge:
        return not hidden.all()


class _TooLarge(Exception):
    """A block too large for the rank test within the time and memory the audit may take."""


class _Block:
    """A connected component of withheld cells and the known margins linking them."""

    def __init__(self, cells: Ints, rows: Ints, matrix: Sparse, spread: Sparse) -> None:
        self.cells = cells
        self.rows = rows
        self.matrix = matrix  # the margins over the block's cells
        self.spread = spread  # every cell by the block's margins: a combination's cell weights
        self._span: tuple[Floats, Floats] | None = None
        self._distance: Floats | None = None

    def span(self) -> tuple[Floats, Floats]:
        """An orthonormal basis of the margins' row space over the block's cells (a row per
        cell), and the matrix taking an item's coordinates in it to the minimum-norm combination
        of margins giving the item. Computed when first needed: the linear programmes need only
        the block's cells and margins."""
        if self._span is None:
            rows, cells = self.matrix.shape
            if min(rows, cells) > _LARGEST or min(rows, cells) * cells > _LARGEST * _WIDEST:
                raise _TooLarge
            self._span = _span(self.matrix)
        return self._span

    def distance(self) -> Floats:
        """Each cell's squared distance from the row space."""
        if self._distance is None:
            basis = self.span()[0]
            self._distance = 1.0 - np.einsum("ij,ij->i", basis, basis)
        return self._distance


class _Layout:
    """One withheld set as the partner sees it: independent blocks, and how far each item is
    from a known linear function of the margins."""

    def __init__(self, audit: _Audit, hidden: Bools) -> None:
        n = audit.n
        self.block_of = np.full(n, -1, dtype=np.intp)
        self.local = np.full(n, -1, dtype=np.intp)
        self.blocks: list[_Block] = []
        cells = np.flatnonzero(hidden)
        meets = audit.margin @ hidden.astype(np.float64) > 0
        # Margins that add something over the withheld cells. Dropping the others (the grand
        # total is usually the sum of its rows) changes nothing the partner can work out, but
        # lets the table fall apart into blocks, and keeps every cell from being next to all.
        self.in_play = meets & ~audit.redundant(hidden)
        rows = np.flatnonzero(self.in_play)
        a = audit.margin[rows][:, cells]
        scipy = _scipy()
        graph = scipy.sparse.bmat([[None, a], [a.T, None]], format="csr")
        _, labels = scipy.connected_components(graph, directed=False)
        row_label, cell_label = labels[: len(rows)], labels[len(rows) :]
        # Blocks in order of their first cell, so that everything downstream is deterministic.
        _, first = np.unique(cell_label, return_index=True)
        for label in cell_label[np.sort(first)]:
            mine = cells[cell_label == label]
            block = audit.block(mine, rows[row_label == label])
            self.block_of[mine] = len(self.blocks)
            self.local[mine] = np.arange(len(mine))
            self.blocks.append(block)
        self.items: list[Item] = [(int(i),) for i in cells]
        self.items += [m for m in audit.small if hidden[list(m)].all()]
        self._distance: dict[Item, float] = {}

    def parts(self, item: Item) -> dict[int, Ints]:
        """The item's cells by block."""
        cells = np.asarray(item, dtype=np.intp)
        of = self.block_of[cells]
        return {int(b): cells[of == b] for b in np.unique(of)}

    def unbounded(self, item: Item) -> bool:
        """Whether a cell of the item is in no margin in play, so free to take any value."""
        return any(not len(self.blocks[b].rows) for b in np.unique(self.block_of[list(item)]))

    def determined(self, item: Item) -> bool:
        """Whether the item's indicator vector lies in the known margins' row space."""
        if len(item) == 1:
            (i,) = item
            return bool(self.blocks[self.block_of[i]].distance()[self.local[i]] < _KNOWN)
        if item not in self._distance:
            total = 0.0
            for b, cells in self.parts(item).items():
                coords = self.blocks[b].span()[0][self.local[cells]].sum(axis=0)
                total += len(cells) - float(coords @ coords)
            self._distance[item] = total
        return self._distance[item] < _KNOWN

    def determined_cells(self) -> Bools:
        """For every cell, whether it is withheld and determined."""
        out = np.zeros(len(self.block_of), dtype=np.bool_)
        for block in self.blocks:
            out[block.cells] = block.distance() < _KNOWN
        return out

    def weights(self, n: int, item: Item) -> Floats:
        """Each cell's weight in the minimum-norm combination of known margins giving the item:
        withholding a released cell of nonzero weight breaks it."""
        w = np.zeros(n)
        for b, cells in self.parts(item).items():
            block = self.blocks[b]
            basis, combine = block.span()
            w += block.spread @ (combine @ basis[self.local[cells]].sum(axis=0))
        return w


class _Witnesses:
    """The largest and smallest values of cells and margins under k in the feasible tables
    found so far. A table feasible for some withheld set is feasible for every larger one."""

    def __init__(self, audit: _Audit) -> None:
        self.audit = audit
        self.high = audit.population.copy()
        self.low = audit.population.copy()
        self.small_high = np.asarray(audit.small_margin @ audit.population, dtype=np.float64)

    def add(self, cells: Ints, x: Floats) -> None:
        self.high[cells] = np.maximum(self.high[cells], x)
        self.low[cells] = np.minimum(self.low[cells], x)
        table = self.audit.population.copy()
        table[cells] = x
        self.small_high = np.maximum(self.small_high, self.audit.small_margin @ table)

    def shown(self, item: Item) -> bool:
        """Whether the item has moved enough: anything under k up to k, a cell at or above k by
        at least 1 either way."""
        k = self.audit.k
        if len(item) > 1:
            return bool(self.small_high[self.audit.small_index[item]] >= k - _SLACK)
        (i,) = item
        p = self.audit.population[i]
        if p < k:
            return bool(self.high[i] >= k - _SLACK)
        return bool(self.high[i] >= p + 1 - _SLACK or self.low[i] <= p - 1 + _SLACK)


class _Audit:
    """A table with its cells in key order (indexes below are positions in that order), its
    known margins, and what the audit has learnt so far."""

    def __init__(self, keys: Sequence[Key], population: Sequence[int], k: int) -> None:
        self.n = n = len(keys)
        self.k = k
        self.population = np.asarray(population, dtype=np.float64)
        self.lower = np.minimum(self.population, 1.0)
        known: list[list[int]] = []
        small: list[Item] = []
        # For each known margin and each dimension it sums over, its finer margins under k.
        owners: list[int] = []
        finer: list[list[int]] = []
        seen: set[frozenset[int]] = set()
        for summed, groups in _groups(keys):
            for group in groups:
                if frozenset(group) in seen:
                    continue
                seen.add(frozenset(group))
                if sum(population[i] for i in group) < k:
                    if len(group) > 1:
                        small.append(tuple(group))
                    continue
                for d in summed if len(summed) > 1 else ():
                    split: dict[str, list[int]] = defaultdict(list)
                    for i in group:
                        split[keys[i][d]].append(i)
                    owners.append(len(known))
                    finer.append(
                        [i for s in split.values() if sum(population[j] for j in s) < k for i in s]
                    )
                known.append(group)
        self.small = sorted(small)
        sums = np.asarray([sum(population[i] for i in m) for m in known], dtype=np.float64)
        self.slack = sums - np.asarray([self.lower[m].sum() for m in known], dtype=np.float64)
        self.small_index = {m: j for j, m in enumerate(self.small)}
        self.margin: Sparse = _incidence(known, n)
        self.lines: Sparse = self.margin.T.tocsr()  # row i: the known margins through cell i
        self.small_margin: Sparse = _incidence(self.small, n)
        self.finer: Sparse = _incidence(finer, n)
        self.owner = np.asarray(owners, dtype=np.intp)
        self.grid = _grid(keys)
        self.blocks: dict[tuple[bytes, bytes], _Block] = {}
        self.seen = _Witnesses(self)  # for the withheld set as it grows
        self._full: _Layout | None = None
        self._given_away: Bools | None = None
        self._full_seen = _Witnesses(self)  # for every cell withheld, and only that
        self._inherent: dict[Item, bool] = {}

    @classmethod
    def sorted(
        cls, keys: Sequence[Key], population: Sequence[int], k: int
    ) -> tuple[_Audit, list[int]]:
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return cls([keys[i] for i in order], [population[i] for i in order], k), order

    def redundant(self, hidden: Bools) -> Bools:
        """Known margins that are, over the withheld cells, sums of finer known margins: for some
        dimension they sum over, none of their finer margins under k meets a withheld cell."""
        clear = self.finer @ hidden.astype(np.float64) == 0
        out = np.zeros(self.margin.shape[0], dtype=np.bool_)
        out[self.owner[clear]] = True
        return out

    def block(self, cells: Ints, rows: Ints) -> _Block:
        """A block, from an earlier round if it has not changed."""
        key = (cells.tobytes(), rows.tobytes())
        if key not in self.blocks:
            sub = self.margin[rows]
            self.blocks[key] = _Block(cells, rows, sub[:, cells], sub.T.tocsr())
        return self.blocks[key]

    # ---- what no answer can protect -------------------------------------------------------------

    def full(self) -> _Layout:
        """The layout with every cell withheld."""
        if self._full is None:
            self._full = _Layout(self, np.ones(self.n, dtype=np.bool_))
        return self._full

    def given_away(self) -> Bools:
        """Cells the known margins determine however much is withheld: no use as partners."""
        if self._given_away is None:
            self._given_away = self.full().determined_cells()
        return self._given_away

    def capped(self, item: Item) -> bool:
        """Whether a single known margin holding the item keeps it under k, whatever is withheld:
        the item is at most the margin less the least its other cells can hold. The cheap part of
        `inherent`, for an item under k."""
        if len(item) == 1 and self.population[item[0]] >= self.k:
            return False
        rows = self.lines[item[0]].indices
        for i in item[1:]:
            rows = np.intersect1d(rows, self.lines[i].indices, assume_unique=True)
        if not len(rows):
            return False
        return bool(self.slack[rows].min() + self.lower[list(item)].sum() < self.k - _SLACK)

    def given(self, item: Item) -> bool:
        """Whether the known margins determine the item even with every cell withheld."""
        corners = self._corners(item)
        if corners is not None and (corners >= 0).all(axis=0).any():
            return False  # a whole hypercube around it moves it (see `cube`)
        return self.full().determined(item)

    def inherent(self, item: Item) -> bool:
        """For an item the known margins do not determine here (nor, then, with every cell
        withheld): whether it stays pinned even with every cell withheld. Withholding only widens
        what is feasible, so then no answer to this query can protect it."""
        if item not in self._inherent:
            if self.capped(item):
                self._inherent[item] = True
            elif self.cube(item, np.ones(self.n, dtype=np.bool_), exact=False) is not None:
                self._inherent[item] = False
            else:
                self._inherent[item] = not self._settled(item, self.full(), self._full_seen)
        return self._inherent[item]

    def cube(self, item: Item, taken: Bools, exact: bool) -> list[int] | None:
        """The cells to withhold (besides those taken) for the cheapest hypercube of present
        cells with the item's cell at a corner: fewest new cells, then fewest people, then first
        in key order. Adding t to the corners an even number of steps from the cell and taking t
        from the others keeps every margin, so withholding a whole cube leaves the cell
        undetermined, and free to move by t up to the least room (population above its bound)
        of the corners giving. Only cubes giving the cell room to move enough count, unless
        `exact` (any cube then breaks an exact exposure). None if there is no such cube, or the
        table is not laid out on a grid, or the item is a margin."""
        corners = self._corners(item)
        if corners is None:
            return None
        present = (corners >= 0).all(axis=0)
        room = np.append(self.population - self.lower, -np.inf)[corners]
        odd = np.asarray([bin(c).count("1") % 2 == 1 for c in range(len(corners))])
        (i,) = item
        need = max(self.k - self.population[i], 1.0) - _SLACK
        # Up, the odd corners give; down (for a cell at or above k), the even ones, itself too.
        ok = present & (room[odd].min(axis=0) >= need)
        if self.population[i] >= self.k:
            ok |= present & (room[~odd].min(axis=0) >= need)
        if not ok.any():
            if not exact or not present.any():
                return None
            ok = present
        new = ~np.append(taken, True)[corners]
        count = new.sum(axis=0).ravel()
        people = (np.append(self.population, 0.0)[corners] * new).sum(axis=0).ravel()
        best = np.flatnonzero(ok.ravel())
        best = best[np.lexsort((best, people[best], count[best]))[0]]
        chosen = corners.reshape(len(corners), -1)[:, best]
        return sorted(int(c) for c in chosen if not taken[c])

    def _corners(self, item: Item) -> Ints | None:
        """For a cell on the grid, the cells at each corner (in binary order of the dimensions
        moved) of every hypercube with the cell at corner 0, one axis per dimension's other
        values; -1 where there is no such cell."""
        if self.grid is None or len(item) > 1:
            return None
        grid, coords = self.grid
        here = coords[item[0]]
        others = [np.delete(np.arange(size), c) for size, c in zip(grid.shape, here, strict=True)]
        if not all(len(o) for o in others):
            return None
        shape = [len(o) for o in others]
        out = []
        for c in range(1 << grid.ndim):
            moved = [bool(c >> d & 1) for d in range(grid.ndim)]
            index = np.ix_(*[o if m else [h] for o, h, m in zip(others, here, moved, strict=True)])
            out.append(np.broadcast_to(grid[index], shape))
        return np.asarray(out, dtype=np.intp)

    # ---- one round ------------------------------------------------------------------------------

    def round(self, hidden: Bools, first: bool = False) -> list[int]:
        """Cells to withhold next, for the exposures of this withheld set: exact ones first, then
        (in blocks those leave alone) bounds. With `first`, stop at the first exposure that
        withholding more could protect, and prove every exposure (enough for `recoverable`)."""
        layout = _Layout(self, hidden)
        chase = _Chase(self, layout, hidden)
        busy: set[int] = set()  # blocks that change before their bounds matter
        for item in layout.items:
            if not layout.determined(item) or self.given(item):
                continue
            if chase.take(item, partial(layout.weights, self.n, item)):
                busy.update(layout.parts(item))
                if first and chase.added:
                    return chase.added
        doubtful = [
            m
            for m in layout.items
            if not layout.determined(m) and not busy & layout.parts(m).keys() and not self.capped(m)
        ]
        for item in self._unsettled(layout, doubtful):
            # A hypercube with room settles the item once withheld, so suppression takes one
            # without first proving the item exposed (what the batched programmes leave nearly
            # always is); `recoverable` must prove it.
            if chase.touches(item):
                continue
            if not first and (cube := self.cube(item, chase.taken, exact=False)) is not None:
                chase.add(cube)
                continue
            # Whether no answer can protect it is kept from round to round: ask that first.
            if self.inherent(item) or self._settled(item, layout, self.seen):
                continue
            if chase.take(item, None) and first and chase.added:
                return chase.added
        return chase.added

    # ---- protection intervals -------------------------------------------------------------------

    def _optimum(
        self, layout: _Layout, blocks: Sequence[int], objective: Floats
    ) -> tuple[Ints, Floats] | None:
        """A feasible table of these blocks (their cells, and values) maximising the objective;
        None if HiGHS found none, which then settles nothing (fail closed)."""
        chosen = [layout.blocks[b] for b in blocks]
        cells = np.concatenate([b.cells for b in chosen])
        scipy = _scipy()
        a = scipy.sparse.block_diag([b.matrix for b in chosen], format="csr")
        result = scipy.linprog(
            -objective[cells],
            A_eq=a,
            b_eq=a @ self.population[cells],
            bounds=np.column_stack((self.lower[cells], np.full(len(cells), np.inf))),
            method="highs",
        )
        if result.status != 0:
            return None
        return cells, np.asarray(result.x, dtype=np.float64)

    def _settled(self, item: Item, layout: _Layout, seen: _Witnesses) -> bool:
        """Whether some feasible table of the layout moves the item enough: the witnesses, else
        programmes of its own (exact, up to HiGHS's tolerance), whose optima become witnesses."""
        if seen.shown(item) or layout.unbounded(item):
            return True
        small = len(item) > 1 or self.population[item[0]] < self.k
        for sign in (1.0,) if small else (1.0, -1.0):
            objective = np.zeros(self.n)
            objective[list(item)] = sign
            # Blocks are independent: the item's extreme is the sum of its parts' extremes.
            total = 0.0
            for b in layout.parts(item):
                found = self._optimum(layout, [b], objective)
                if found is None:
                    return False
                seen.add(*found)
                total += float(found[1] @ objective[found[0]])
            if small:
                return total >= self.k - _SLACK
            # total is sign times the cell's value: has it moved by 1 this way?
            if total - sign * float(self.population[item[0]]) >= 1 - _SLACK:
                return True
        return False

    def _unsettled(self, layout: _Layout, items: list[Item]) -> list[Item]:
        """The items that no witness moves enough, after programmes maximising the sum of all of
        them still in doubt (over every block at once), for as long as those settle any."""
        pending = [m for m in items if not self.seen.shown(m) and not layout.unbounded(m)]
        single = [m for m in pending if len(layout.parts(m)) == 1]
        for small, sign in ((True, 1.0), (False, 1.0), (False, -1.0)):
            todo = [m for m in single if (len(m) > 1 or self.population[m[0]] < self.k) == small]
            while todo:
                objective = np.zeros(self.n)
                for m in todo:
                    objective[list(m)] += sign
                blocks = sorted({int(layout.block_of[m[0]]) for m in todo})
                if (found := self._optimum(layout, blocks, objective)) is not None:
                    self.seen.add(*found)
                left = [m for m in todo if not self.seen.shown(m)]
                if len(left) == len(todo):
                    break
                todo = left
        return [m for m in pending if not self.seen.shown(m)]


class _Chase:
    """The partners chosen in one round."""

    def __init__(self, audit: _Audit, layout: _Layout, hidden: Bools) -> None:
        self.audit = audit
        self.in_play = layout.in_play
        self.taken = hidden.copy()
        self.touched = np.zeros(audit.n, dtype=np.bool_)
        self.added: list[int] = []

    def _cells(self, rows: Ints) -> Ints:
        return np.asarray(np.unique(self.audit.margin[rows].indices), dtype=np.intp)

    def _through(self, cells: Sequence[int] | Ints) -> Ints:
        """The margins in play through any of these cells."""
        found = np.unique(self.audit.lines[np.asarray(cells, dtype=np.intp)].indices)
        return np.asarray(found[self.in_play[found]], dtype=np.intp)

    def _mask(self, cells: Sequence[int] | Ints) -> Bools:
        out = np.zeros(self.audit.n, dtype=np.bool_)
        out[np.asarray(cells, dtype=np.intp)] = True
        return out

    def touches(self, item: Item) -> bool:
        """Whether a partner of this round shares a margin in play with the item, and so may
        already change what is known about it."""
        return bool(self.touched[self._cells(self._through(item))].any())

    def take(self, item: Item, weights: Callable[[], Floats] | None) -> bool:
        """Withhold partners for an exposed item (for an exact exposure, given the weights of the
        combination giving it away): the rest of the cheapest hypercube around it where the table
        has one, else one partner, unless one of this round's partners touches the item (it is
        looked at again next round). True if the item is being dealt with; False if no further
        suppression changes what the partner knows about it."""
        partners = self.audit.cube(item, self.taken, exact=weights is not None)
        if partners is None:
            if self.touches(item):
                return True
            partner = self._partner(item, None if weights is None else weights())
            if partner is None:
                return False
            partners = [partner]
        self.add(partners)
        return True

    def add(self, partners: list[int]) -> None:
        for partner in partners:
            self.taken[partner] = True
            self.touched[partner] = True
            self.added.append(partner)

    def _smallest(self, candidates: Bools) -> int | None:
        """The candidate with the fewest people, ties to the first in key order."""
        found = np.flatnonzero(candidates)
        if not len(found):
            return None
        return int(found[np.argmin(self.audit.population[found])])

    def _partner(self, item: Item, weights: Floats | None) -> int | None:
        """The smallest cell of the first kind there is. For an exact exposure: one next to the
        item that breaks the combination giving it, one anywhere that does, any next to it. For
        bounds: one in the margin through the item whose other withheld cells have the least
        room to move. Then any linked to the item through withheld cells. None if there is none."""
        audit = self.audit
        free = ~self.taken & ~audit.given_away()
        through = self._through(item)
        if weights is not None:
            beside = self._mask(self._cells(through))
            breaks = free & (np.abs(weights) > _WEIGHT)
            for candidates in (breaks & beside, breaks, free & beside):
                if (found := self._smallest(candidates)) is not None:
                    return found
        else:
            inside = self._mask(item)

            def room(j: int) -> tuple[float, list[int]]:
                cells = self._cells(np.asarray([j]))
                other = cells[self.taken[cells] & ~inside[cells]]
                return float((audit.population[other] - 1).sum()), cells.tolist()

            for j in sorted(through.tolist(), key=room):
                candidates = self._mask(self._cells(np.asarray([j])))
                if (found := self._smallest(candidates & free)) is not None:
                    return found
        reach = self._mask(item)
        frontier = np.asarray(item, dtype=np.intp)
        while len(frontier):
            close = self._mask(self._cells(self._through(frontier)))
            if (found := self._smallest(close & free)) is not None:
                return found
            frontier = np.flatnonzero(close & self.taken & ~reach)
            reach[frontier] = True
        return None


@functools.cache
def _scipy() -> SimpleNamespace:
    """scipy's parts used here, imported when first needed (see the module docstring)."""
    from scipy import sparse  # type: ignore[import-untyped]
    from scipy.optimize import linprog  # type: ignore[import-untyped]
    from scipy.sparse.csgraph import connected_components  # type: ignore[import-untyped]

    return SimpleNamespace(
        sparse=sparse, linprog=linprog, connected_components=connected_components
    )


def _incidence(sets: Sequence[Sequence[int]], n: int) -> Sparse:
    """0/1 matrix with a row per set of cell indexes."""
    rows = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    cols = np.fromiter(itertools.chain.from_iterable(sets), dtype=np.intp, count=len(rows))
    return _scipy().sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), n))


def _grid(keys: Sequence[Key]) -> tuple[Ints, Ints] | None:
    """The cells laid out on the cross product of the dimensions' values (-1 where absent), and
    each cell's coordinates; None if that product is too large to search."""
    width = len(keys[0]) if keys else 0
    values = [sorted({key[d] for key in keys}) for d in range(width)]
    shape = [len(v) for v in values]
    if not width or int(np.prod(shape)) > max(_GRID, 4 * len(keys)) or len(set(keys)) < len(keys):
        return None
    rank = [{v: r for r, v in enumerate(vs)} for vs in values]
    coords = np.asarray([[rank[d][key[d]] for d in range(width)] for key in keys], dtype=np.intp)
    grid = np.full(shape, -1, dtype=np.intp)
    grid[tuple(coords.T)] = np.arange(len(keys))
    return grid, coords


def _span(a: Sparse) -> tuple[Floats, Floats]:
    """Orthonormal basis of the row space of `a` (a row per column of `a`), and the matrix taking
    a vector's coordinates in it to the minimum-norm combination of `a`'s rows giving the vector.
    From the Gram matrix on the smaller side: several times faster than an SVD."""
    m, c = a.shape
    if m <= c:
        lam, w = np.linalg.eigh((a @ a.T).toarray())
        keep = lam > (lam[-1] if m else 0.0) * _SINGULAR
        root = np.sqrt(lam[keep])
        return np.asarray(a.T @ w[:, keep]) / root, w[:, keep] / root
    lam, v = np.linalg.eigh((a.T @ a).toarray())
    keep = lam > lam[-1] * _SINGULAR
    basis = v[:, keep]
    return basis, np.asarray(a @ basis) / lam[keep]
