"""Statistical disclosure control for aggregate answers. Pure functions, no I/O.

Primary suppression withholds every cell with fewer than k people (distinct residents, or records for
observational data). Secondary suppression then withholds more cells wherever a withheld value could
otherwise be recovered by subtraction: from the answer's grand total, or from any margin (the cells
that agree on all group-by values but one), since a partner can obtain those by asking a coarser
query. In every such line the withheld cells are then either none, or at least two whose combined
population is at least k.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

Key = tuple[str, ...]


def _lines(keys: Sequence[Key]) -> list[list[int]]:
    """Index groups a margin sums over: the whole table, and for each dimension every set of cells
    equal in all other dimensions."""
    lines: list[list[int]] = [list(range(len(keys)))]
    width = len(keys[0]) if keys else 0
    if width > 1:
        for dim in range(width):
            groups: dict[Key, list[int]] = defaultdict(list)
            for i, key in enumerate(keys):
                groups[key[:dim] + key[dim + 1 :]].append(i)
            lines.extend(groups.values())
    return lines


def suppress(keys: Sequence[Key], population: Sequence[int], k: int) -> set[int]:
    """Indexes of the cells to withhold."""
    withheld = {i for i, n in enumerate(population) if n < k}
    if not withheld:
        return withheld
    lines = _lines(keys)
    changed = True
    while changed:
        changed = False
        for line in lines:
            hidden = [i for i in line if i in withheld]
            shown = [i for i in line if i not in withheld]
            if not hidden or not shown:
                continue
            if len(hidden) == 1 or sum(population[i] for i in hidden) < k:
                # Hide the smallest released cell: the least information lost.
                withheld.add(min(shown, key=lambda i: (population[i], keys[i])))
                changed = True
    return withheld


def recoverable(keys: Sequence[Key], population: Sequence[int], withheld: set[int], k: int) -> bool:
    """True if some line's withheld part is a single cell or smaller than k (what `suppress`
    prevents); the property tests check its output with this."""
    for line in _lines(keys):
        hidden = [i for i in line if i in withheld]
        shown = [i for i in line if i not in withheld]
        if hidden and shown and (len(hidden) == 1 or sum(population[i] for i in hidden) < k):
            return True
    return False
