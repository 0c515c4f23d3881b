"""Residents' transparency (GDPR Art. 15, like Estonia's data tracker): which released results
included a resident's records, for which partner, purpose and agreement, and when.

The link is kept only in the node's own database; it never leaves the city.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from audit.log import SideWrite
from federation.errors import InvalidArgument
from keys import timefmt
from node.consent import page_size, page_token, read_page_token
from node.schema import exchange_residents, exchanges

_CHUNK = 10_000
_INSERT_EXCHANGE = exchanges.insert()
_INSERT_RESIDENTS = exchange_residents.insert()
# The request id of the exchange whose contributors an INSERT ... SELECT records.
_REQUEST_ID = "exchange_request_id"
# INSERT ... SELECT statements by the contributors statement they select from: a statement reused
# (node.aggregate caches them by query shape) is not rebuilt for every exchange.
_FROM_SELECT: dict[sa.Select[Any], sa.Insert] = {}
_MAX_FROM_SELECT = 256


def _residents_from(contributors: sa.Select[Any]) -> sa.Insert:
    stmt = _FROM_SELECT.get(contributors)
    if stmt is None:
        sub = contributors.subquery()
        stmt = exchange_residents.insert().from_select(
            ["resident_id", "request_id"],
            sa.select(sub.c[0], sa.bindparam(_REQUEST_ID, type_=sa.String)),
        )
        if len(_FROM_SELECT) >= _MAX_FROM_SELECT:
            _FROM_SELECT.clear()
        _FROM_SELECT[contributors] = stmt
    return stmt


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

    def side_write(
        self,
        exchange: Exchange,
        contributors: sa.Select[Any] | None,
        data: sa.Connection,
        result_offset: int,
        params: dict[str, Any] | None = None,
    ) -> SideWrite:
        """The rows of this exchange, to commit in the log's own transaction (no commit of their
        own): the exchange, with the log index of its result (`result_offset` after the first
        entry), and every resident in `contributors`, a select of resident ids run on `data`
        (with `params`, if its parameters bind at execution)."""
        ids: list[str] | None = None
        if contributors is not None and self._data is not self._node:
            # Data elsewhere: read the ids now, on the connection the answer was computed on.
            ids = [str(r[0]) for r in data.execute(contributors, params)]

        def write(conn: sa.Connection, first_index: int) -> None:
            row = {
                **exchange.__dict__,
                "released_at": timefmt.to_db(exchange.released_at),
                "log_index": first_index + result_offset,
            }
            conn.execute(_INSERT_EXCHANGE, row)
            rid = exchange.request_id
            if ids is not None:
                for start in range(0, len(ids), _CHUNK):
                    conn.execute(
                        _INSERT_RESIDENTS,
                        [
                            {"resident_id": r, "request_id": rid}
                            for r in ids[start : start + _CHUNK]
                        ],
                    )
            elif contributors is not None:
                conn.execute(_residents_from(contributors), {**(params or {}), _REQUEST_ID: rid})

        return write

    def record(self, exchange: Exchange, contributors: sa.Select[Any] | None) -> None:
        """Commit one exchange in a transaction of its own (outside a log append)."""
        with self._data.connect() as data, self._node.begin() as conn:
            self.side_write(exchange, contributors, data, result_offset=0)(conn, exchange.log_index)

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
