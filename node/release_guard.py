"""The differencing guard applied to one aggregate answer under the `exact` regime.

After the answer is computed and suppressed (node.aggregate), each cell's contributors and records
are computed (node.cell_sets, one more statement over the same rows); the released cells are
compared with what the partner already holds under the agreement and dataset
(node.release_history, node.differencing); the cells that would expose a group are withheld, and
secondary suppression (node.disclosure.suppress) runs again with them and every cell withheld so
far forced, so the rest of the table cannot rebuild them. A query with no group-by whose one cell
is withheld this way is refused (PermissionDenied DIFFERENCING_RISK): an answer with nothing in it
would only say the same. The cells finally released are recorded in the log's transaction
(`Guarded.side_write`), and their contributors' union is the transparency record's bitmap, so the
record needs no scan of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pyroaring import BitMap

from audit.log import SideWrite
from domain.agreement import Agreement, Regime
from domain.errors import PermissionDenied
from node import aggregate, cell_sets, differencing
from node.differencing import CellSet
from node.release_history import HistoryKey, ReleaseHistory, Snapshot

Key = tuple[str, ...]


@dataclass(frozen=True)
class Asked:
    """One answer to guard: to whom (`partner`), under which agreement, for which request, what
    was scanned, and k."""

    partner: str
    agreement: Agreement
    request_id: str
    scan: aggregate.Scan
    k: int


@dataclass(frozen=True)
class Guarded:
    """What the guard let through, to record once the answer is released."""

    history: ReleaseHistory
    key: HistoryKey
    asked: Asked
    released: list[CellSet]
    snapshot: Snapshot

    def side_write(self) -> SideWrite:
        """The released cells' rows, for the log's transaction (node.release_history)."""
        return self.history.side_write(
            self.key,
            self.asked.agreement.valid_until,
            self.asked.request_id,
            self.released,
            self.snapshot,
            self.asked.k,
        )


class ReleaseGuard:
    """The guard of one node, over its release history in the node database `consents`."""

    def __init__(self, consents: sa.Engine) -> None:
        self._consents = consents
        self.history = ReleaseHistory(consents)

    @staticmethod
    def applies(agreement: Agreement) -> bool:
        """Whether answers under `agreement` are guarded: the `exact` regime only."""
        return agreement.disclosure_terms.regime is Regime.EXACT

    def apply(
        self,
        asked: Asked,
        conn: sa.Connection,
        answer: aggregate.AggregateResult,
        numbers: sa.FromClause | None,
    ) -> tuple[aggregate.AggregateResult, Guarded]:
        """`answer` with the cells that would expose a group withheld (and secondary suppression
        run again), and what to record; `numbers`: the resident numbers readable on `conn`.
        Raises PermissionDenied DIFFERENCING_RISK for a query with no group-by whose cell is
        withheld."""
        scan = asked.scan
        fields = [d.field for d in scan.query.group_by]
        sets = cell_sets.compute(conn, scan, self._consents, numbers)
        keys = [tuple(c.key[f] for f in fields) for c in answer.cells]
        empty = CellSet(BitMap(), 0, 0)
        found = [sets.get(key, empty) for key in keys]
        key = HistoryKey(asked.partner, asked.agreement.agreement_id, scan.query.dataset)
        snapshot = self.history.earlier(key, [c.size for c in found], asked.k)
        exposed = differencing.guard(found, snapshot.earlier, asked.k)
        # A cell the second statement did not see (consent changed in between) is withheld too.
        exposed |= {i for i, key in enumerate(keys) if key not in sets}
        if exposed and not fields:
            raise PermissionDenied(
                "this answer, with answers this partner already received, would single out "
                f"fewer than k = {asked.k} people",
                reason="DIFFERENCING_RISK",
            )
        if exposed:
            answer = _suppress_again(answer, keys, sets, exposed, asked)
            keys = [tuple(c.key[f] for f in fields) for c in answer.cells]
        released = [sets[key] for key in keys]
        guarded = Guarded(self.history, key, asked, released, snapshot)
        union = BitMap.union(*(c.members for c in released)) if released else BitMap()
        bitmap = cell_sets.bitmap_bytes(union) if scan.ds.resident_linked else None
        return dataclasses.replace(answer, contributor_bitmap=bitmap), guarded


def _suppress_again(
    answer: aggregate.AggregateResult,
    keys: list[Key],
    sets: dict[Key, CellSet],
    exposed: set[int],
    asked: Asked,
) -> aggregate.AggregateResult:
    """`answer` with `exposed` released cells withheld, and whatever secondary suppression then
    withholds besides (every cell withheld before stays withheld)."""
    fields = [d.field for d in asked.scan.query.group_by]
    withheld_keys = [tuple(w[f] for f in fields) for w in answer.withheld]
    table = keys + withheld_keys
    linked = asked.scan.ds.resident_linked

    def population(key: Key) -> int:
        cell = sets.get(key)
        if cell is None:
            return 0
        return cell.size if linked else cell.records

    forced = set(exposed) | set(range(len(keys), len(table)))
    hidden = aggregate.suppressed(table, [population(key) for key in table], asked.k, forced)
    cells = [c for i, c in enumerate(answer.cells) if i not in hidden]
    withheld: list[dict[str, Any]] = [
        dict(zip(fields, table[i], strict=True)) for i in sorted(hidden, key=table.__getitem__)
    ]
    return dataclasses.replace(answer, cells=cells, withheld=withheld)
