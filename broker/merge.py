"""Merge verified city results into one answer. Pure; no I/O.

Counts and sums add, minima and maxima combine, averages are weighted by each city's record count.
A cell withheld by a city keeps that city's value out of the merge and names the city, so a merged
cell never reveals what a city withheld.

Under the cell_key regime (node.cell_key) a city's counts, sums and record count are perturbed, so
a merged count or sum is the sum of perturbed values (each city's error within its agreement's
bound, unbiased), and a merged average is weighted by perturbed record counts. Each city's signed
result states its regime, so a partner can tell which parts of a merged cell are exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Key = tuple[tuple[str, str], ...]


@dataclass
class MergedCell:
    key: dict[str, str]
    values: dict[str, float] = field(default_factory=dict)
    records: int = 0
    contributing: list[str] = field(default_factory=list)
    withholding: list[str] = field(default_factory=list)

    @property
    def withheld(self) -> bool:
        """True when no city contributed to this cell, so it carries no values."""
        return not self.contributing


def _combine(name: str, mine: float, mine_n: int, theirs: float, theirs_n: int) -> float:
    if name.startswith("min("):
        return min(mine, theirs)
    if name.startswith("max("):
        return max(mine, theirs)
    if name.startswith("avg("):
        total = mine_n + theirs_n
        return (mine * mine_n + theirs * theirs_n) / total if total else 0.0
    return mine + theirs


def merge(results: Iterable[tuple[str, dict[str, Any]]]) -> list[MergedCell]:
    """`results` are (city, verified result payload) pairs."""
    cells: dict[Key, MergedCell] = {}

    def cell(key: dict[str, str]) -> MergedCell:
        k: Key = tuple(sorted(key.items()))
        if k not in cells:
            cells[k] = MergedCell(dict(key))
        return cells[k]

    for city, result in results:
        for c in result["cells"]:
            m = cell(c["key"])
            n = int(c.get("records", 0))
            if not m.contributing:
                m.values = {name: float(v) for name, v in c["values"].items()}
            else:
                m.values = {
                    name: _combine(name, m.values[name], m.records, float(v), n)
                    for name, v in c["values"].items()
                }
            m.records += n
            m.contributing.append(city)
        for key in result["withheld"]:
            cell(key).withholding.append(city)
    return [cells[k] for k in sorted(cells)]


def to_payload(cells: list[MergedCell]) -> list[dict[str, Any]]:
    """One JSON-ready dict per cell, in order: key, values, contributing and withholding cities."""
    return [
        {
            "key": c.key,
            "values": c.values,
            "contributing": c.contributing,
            "withholding": c.withholding,
        }
        for c in cells
    ]
