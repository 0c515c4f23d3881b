"""Residents' transparency (GDPR Art. 15, like Estonia's data tracker): which released results
included a resident's records, for which partner, purpose and agreement, and when.

The link is kept only in the node's own database; it never leaves the city.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from federation.errors import InvalidArgument
from keys import timefmt
from node.consent import page_size, page_token, read_page_token
from node.schema import exchange_residents, exchanges

_CHUNK = 10_000


@dataclass(frozen=True)
class Exchange:
    request_id: str
    partner: str
    purpose: str
    dataset: str
    agreement_id: str
    agreement_version: int
    released_at: datetime
    log_index: int


class ExchangeRecorder:
    def __init__(self, node: sa.Engine, data: sa.Engine) -> None:
        self._node, self._data = node, data

    def record(
        self,
        exchange: Exchange,
        contributors: sa.Select[Any] | None,
        data: sa.Connection | None = None,
    ) -> None:
        """Store the exchange and every resident in `contributors` (a select of resident ids, run
        on `data` when given: the connection the answer was computed on)."""
        row = {**exchange.__dict__, "released_at": timefmt.to_db(exchange.released_at)}
        rid = sa.literal(exchange.request_id, type_=sa.String)
        with self._node.begin() as conn:
            conn.execute(exchanges.insert().values(row))
            if contributors is None:
                return
            if self._data is self._node:
                sub = contributors.subquery()
                conn.execute(
                    exchange_residents.insert().from_select(
                        ["resident_id", "request_id"], sa.select(sub.c[0], rid)
                    )
                )
                return
            # Data elsewhere: stream the ids across, never holding them all in memory.
            if data is None:
                with self._data.connect() as own:
                    self._copy(conn, own, contributors, exchange.request_id)
            else:
                self._copy(conn, data, contributors, exchange.request_id)

    @staticmethod
    def _copy(
        node: sa.Connection, data: sa.Connection, contributors: sa.Select[Any], request_id: str
    ) -> None:
        result = data.execution_options(stream_results=True).execute(contributors)
        for chunk in result.partitions(_CHUNK):
            node.execute(
                exchange_residents.insert(),
                [{"resident_id": r[0], "request_id": request_id} for r in chunk],
            )

    def for_resident(self, resident_id: str, size: int, token: str) -> tuple[list[Exchange], str]:
        """Newest first, paginated. Releases in the same second (timestamps have second
        precision) are ordered by their place in the node's log."""
        n = page_size(size)
        stmt = (
            sa.select(exchanges)
            .join(exchange_residents, exchange_residents.c.request_id == exchanges.c.request_id)
            .where(exchange_residents.c.resident_id == resident_id)
        )
        if token:
            released, last_index = read_page_token(token, 2)
            try:
                after = timefmt.to_db(timefmt.parse(released))
                index = int(last_index)
                if not 0 <= index < 2**63:
                    raise ValueError(last_index)
            except ValueError:
                raise InvalidArgument(
                    "page_token is not valid", reason="PAGE_TOKEN_INVALID"
                ) from None
            stmt = stmt.where(
                sa.tuple_(exchanges.c.released_at, exchanges.c.log_index)
                < sa.tuple_(sa.literal(after), sa.literal(index))
            )
        stmt = stmt.order_by(exchanges.c.released_at.desc(), exchanges.c.log_index.desc())
        with self._node.connect() as conn:
            rows = conn.execute(stmt.limit(n + 1)).mappings().all()
        items = [
            Exchange(
                r["request_id"],
                r["partner"],
                r["purpose"],
                r["dataset"],
                r["agreement_id"],
                r["agreement_version"],
                timefmt.from_db(r["released_at"]),
                r["log_index"],
            )
            for r in rows[:n]
        ]
        next_token = ""
        if len(rows) > n:
            last = items[-1]
            next_token = page_token(timefmt.fmt(last.released_at), str(last.log_index))
        return items, next_token
