"""A city's dry-run answer to a query (what it would do, under which terms), and the broker's
negotiation of the finest shape every asked city allows. Pure; no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from domain.agreement import Appearance, FieldTerms
from domain.query import Dimension, Query

# Generalisations from finest to coarsest; "" is the value as stored.
ORDERS: tuple[tuple[str, ...], ...] = (
    ("", "day", "week", "month", "year"),
    ("", "band5", "band10"),
)


@dataclass(frozen=True)
class QueryPlan:
    allowed: bool
    code: str = ""
    reason: str = ""
    message: str = ""
    agreement_id: str = ""
    agreement_version: int = 0
    fields: dict[str, FieldTerms] = field(default_factory=dict)
    min_cell_size: int = 0
    epsilon_per_query: float = 0.0

    def allows(self, field_name: str, generalisation: str) -> bool:
        """True if the terms release the field at `generalisation` (a raw field: at any)."""
        terms = self.fields.get(field_name)
        if terms is None or terms.appearance is Appearance.AGGREGATE_ONLY:
            return False
        return terms.appearance is Appearance.RAW or generalisation in terms.generalisations


def _order(dimension: Dimension, plans: Mapping[str, QueryPlan]) -> tuple[str, ...]:
    """The generalisation scale a dimension lives on, told by the names in play."""
    names = {dimension.generalisation} - {""}
    for p in plans.values():
        terms = p.fields.get(dimension.field)
        if terms is not None:
            names |= terms.generalisations
    for order in ORDERS:
        if names and names <= set(order):
            return order
    return ("",) if not names else (dimension.generalisation,)


def negotiate(query: Query, plans: Mapping[str, QueryPlan]) -> tuple[Query, list[str]]:
    """Coarsen each group-by dimension to the finest generalisation, at least as coarse as asked,
    that every city whose agreement has the field allows; cities without the field at all are left
    to refuse. Returns the query to send and one note per change."""
    dims, notes = [], []
    for d in query.group_by:
        holders = {c: p for c, p in plans.items() if d.field in p.fields}
        order = _order(d, plans)
        start = order.index(d.generalisation) if d.generalisation in order else 0
        chosen = next(
            (g for g in order[start:] if all(p.allows(d.field, g) for p in holders.values())), None
        )
        if chosen is None or chosen == d.generalisation:
            dims.append(d)
            continue
        dims.append(Dimension(d.field, chosen))
        notes.append(
            f"{d.field}: {d.generalisation or 'raw'} -> {chosen}, the finest shape "
            f"{', '.join(sorted(holders))} all allow"
        )
    return replace(query, group_by=tuple(dims)), notes


def is_coarsening(asked: Query, sent: Query) -> bool:
    """True if `sent` differs from `asked` only by coarser generalisations of the same dimensions."""
    if replace(sent, group_by=asked.group_by) != asked or len(sent.group_by) != len(asked.group_by):
        return False
    for a, s in zip(asked.group_by, sent.group_by, strict=True):
        if a.field != s.field:
            return False
        if a.generalisation == s.generalisation:
            continue
        order = next((o for o in ORDERS if a.generalisation in o and s.generalisation in o), None)
        if order is None or order.index(s.generalisation) < order.index(a.generalisation):
            return False
    return True
