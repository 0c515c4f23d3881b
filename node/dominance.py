"""The (n, k%) dominance rule for sums and averages: a cell where the n largest contributors make
up more than k % of the total is withheld like a small cell, because its value would tell each
large contributor (or anyone who knows one) roughly what the others contributed, and it is close
to the largest one's own value (Hundepool et al., "Statistical Disclosure Control", Wiley 2012,
4.2.2 "The (n,k)-dominance rule").

A contributor is a resident for resident-linked data (the sum of that resident's values in the
cell) and a record for observational data. Magnitudes count as absolute values. The statement
(`top_contributions`) computes, per cell and summed field, the total, the n largest and the
largest contribution, in one pass where the data lives (a window rank over the per-contributor
sums); `dominated` is the rule itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from domain.agreement import DominanceTerms


@dataclass(frozen=True)
class Contributions:
    """One summed field in one cell: the total of the absolute contributions, the sum of the n
    largest, and the largest."""

    total: float
    top_n: float
    largest: float


def dominated(c: Contributions, terms: DominanceTerms) -> bool:
    """Whether the n largest contributions make up more than `percent` % of the total."""
    return c.total > 0 and c.top_n > terms.percent / 100.0 * c.total


def top_contributions(
    source: sa.FromClause,
    conditions: Sequence[sa.ColumnElement[bool]],
    dims: Sequence[sa.ColumnElement[Any]],
    contributor: sa.ColumnElement[Any] | None,
    fields: dict[str, sa.ColumnElement[Any]],
    n: int,
) -> sa.Select[Any]:
    """Per cell (group-by values d0, d1, ...), for each field j: t{j} the total of the absolute
    contributions, n{j} the n largest's sum, x{j} the largest. `contributor`: the resident
    column (None: each record is a contributor)."""
    labelled = [d.label(f"d{i}") for i, d in enumerate(dims)]
    names = list(fields)
    if contributor is not None:
        per = (
            sa.select(
                *labelled,
                *(sa.func.sum(fields[f]).label(f"v{j}") for j, f in enumerate(names)),
            )
            .select_from(source)
            .where(*conditions)
            .group_by(*dims, contributor)
            .subquery("per_contributor")
        )
    else:
        per = (
            sa.select(*labelled, *(fields[f].label(f"v{j}") for j, f in enumerate(names)))
            .select_from(source)
            .where(*conditions)
            .subquery("per_record")
        )
    cell = [per.c[f"d{i}"] for i in range(len(dims))]
    size = [sa.func.coalesce(sa.func.abs(per.c[f"v{j}"]), 0) for j in range(len(names))]
    ranked = sa.select(
        *cell,
        *(a.label(f"a{j}") for j, a in enumerate(size)),
        *(
            sa.func.row_number().over(partition_by=cell or None, order_by=a.desc()).label(f"r{j}")
            for j, a in enumerate(size)
        ),
    ).subquery("ranked")
    by_cell = [ranked.c[f"d{i}"] for i in range(len(dims))]
    stmt = sa.select(
        *by_cell,
        *(
            col
            for j in range(len(names))
            for col in (
                sa.func.sum(ranked.c[f"a{j}"]).label(f"t{j}"),
                sa.func.sum(sa.case((ranked.c[f"r{j}"] <= n, ranked.c[f"a{j}"]), else_=0)).label(
                    f"n{j}"
                ),
                sa.func.max(ranked.c[f"a{j}"]).label(f"x{j}"),
            )
        ),
    )
    return stmt.group_by(*by_cell) if by_cell else stmt


def read(
    rows: Sequence[sa.RowMapping], width: int, fields: Sequence[str]
) -> dict[tuple[str, ...], dict[str, Contributions]]:
    """The statement's rows by cell key (group-by values as strings, as node.aggregate keys them)."""
    out: dict[tuple[str, ...], dict[str, Contributions]] = {}
    for row in rows:
        key = tuple(str(row[f"d{i}"]) for i in range(width))
        out[key] = {
            f: Contributions(
                float(row[f"t{j}"] or 0), float(row[f"n{j}"] or 0), float(row[f"x{j}"] or 0)
            )
            for j, f in enumerate(fields)
        }
    return out
