"""Residents' transparency (GDPR Art. 15, like Estonia's data tracker): which released results
included a resident's records, for which partner, purpose and agreement, and when.

The link is kept only in the node's own database; it never leaves the city.

How it is stored, and why. A city-wide aggregate has hundreds of thousands of contributors, and
the record is written with every release, inside the Merkle log's transaction (the release and
its record are durable together), so one row per contributor per exchange (as before) made the
record cost more than the query. Instead:

- every resident gets a node-local number once (resident_numbers, the database's own counter,
  never reused), so a set of contributors is a set of small dense integers;
- an exchange stores its contributors as bitmaps over those numbers, one row per block of
  2**BLOCK_BITS numbers that holds any (exchange_contributors), zlib-compressed: a 1,000,000
  resident city is at most 123 small rows per exchange, whatever the number of contributors;
- the bitmap is computed where the data lives, by the database: the contributors statement is
  joined to the numbers (resident_numbers when the data is beside it; the consent mirror's
  numbers, node.aggregate, when the data is elsewhere) and grouped into 32-bit words, so only
  about one row per 32 residents comes back, and nothing is written per resident. A contributor
  without a number yet (a resident new since the last consent sync) comes back by id and is
  numbered in the log's transaction. On DuckDB with the consent mirror, the aggregate's own scan
  computes each cell's bitmap (node.aggregate.QueryCompiler.run) and the released cells' OR is recorded as is,
  with no second scan, when the cells' bitmaps fit and every contributor has a number.

A bitmap over a dense numbering is both smaller and cheaper than a sorted, delta-coded list at
this density (60 % of residents: under 2 bits a resident before compression), and it answers
"is number n in it?" by decompressing one block of one row, without decoding the whole set.
Looking a resident up reads, newest first, the one block row per exchange that covers their
number and tests a bit, so it never decodes any other resident's block; a resident's page costs
one indexed read per exchange scanned, which a per-resident index folded in later could cut.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from audit.log import SideWrite
from domain.errors import InvalidArgument
from keys import timefmt
from node import aggregate
from node.cache import BoundedCache
from node.consent import page_size, page_token, read_page_token
from node.numbers import numbers_of
from node.schema import exchange_contributors, exchanges, resident_numbers

# A block holds numbers n with the same n >> BLOCK_BITS: 1 KiB of bitmap before compression.
BLOCK_BITS = 13
_WORDS = 1 << (BLOCK_BITS - 5)
_CHUNK = 10_000
# Exchanges read per round trip while looking for a resident's page.
_SCAN = 500
_INSERT_EXCHANGE = exchanges.insert()
_INSERT_BLOCKS = exchange_contributors.insert()
# Words statements kept per recorder, by the (cached, node.aggregate) contributors statement and
# the numbers they use.
_MAX_WORDS_FROM = 256


def words_statement(contributors: sa.Select[Any], numbers: sa.FromClause) -> sa.Select[Any]:
    """Rows (unnumbered resident, word, bits): for numbered contributors, 32-bit word n >> 5 of
    their bitmap (bit n & 31 set for each; a sum of distinct powers of two is their OR); for a
    contributor that `numbers` (columns resident_id, number) does not number, its id."""
    c = contributors.subquery("contributors")
    number = numbers.c.number
    unnumbered = sa.case((number.is_(None), c.c[0])).label("unnumbered")
    # Literals, not parameters: PostgreSQL has no bigint >> bigint, and a parameter in the
    # GROUP BY is not the same expression as one in the select list.
    word = number.op(">>")(sa.literal_column("5", sa.Integer)).label("word")
    bit = sa.cast(sa.literal_column("1"), sa.BigInteger).op("<<")(
        sa.cast(number.op("&")(sa.literal_column("31", sa.Integer)), sa.Integer)
    )
    columns: list[sa.ColumnElement[Any]] = [unnumbered, word, sa.func.sum(bit).label("bits")]
    return (
        sa.select(*columns)
        .select_from(c.outerjoin(numbers, numbers.c.resident_id == c.c[0]))
        .group_by(unnumbered, word)
    )


class _Bitmap:
    """Contributors by block: 32-bit words, written little-endian, so bit o of a block is bit
    o & 7 of its byte o >> 3."""

    def __init__(self) -> None:
        self._blocks: dict[int, array[int]] = {}

    def _block(self, word: int) -> array[int]:
        block = self._blocks.get(word // _WORDS)
        if block is None:
            block = self._blocks[word // _WORDS] = array("I", bytes(4 * _WORDS))
        return block

    def add_word(self, word: int, bits: int) -> None:
        self._block(word)[word % _WORDS] |= bits & 0xFFFFFFFF

    def add_bitmap(self, bitmap: bytes) -> None:
        """Numbers from a bitmap from 0: bit n & 7 of byte n >> 3 set for number n."""
        size = 4 * _WORDS
        for start in range(0, len(bitmap), size):
            chunk = bitmap[start : start + size]
            if chunk.count(0) == len(chunk):
                continue  # no contributor numbered in this block
            words = array("I", chunk.ljust(size, b"\0"))
            if sys.byteorder == "big":
                words.byteswap()
            block = self._blocks.get(start // size)
            if block is None:
                self._blocks[start // size] = words
            else:
                for i, w in enumerate(words):
                    block[i] |= w

    def add(self, numbers: Iterable[int]) -> None:
        for n in numbers:
            self._block(n >> 5)[(n >> 5) % _WORDS] |= 1 << (n & 31)

    def rows(self, request_id: str) -> list[dict[str, Any]]:
        rows = []
        for block, words in sorted(self._blocks.items()):
            if sys.byteorder == "big":
                words = array("I", words)
                words.byteswap()
            rows.append(
                {"request_id": request_id, "block": block, "bits": zlib.compress(words.tobytes())}
            )
        return rows


def _contains(bits: bytes, number: int) -> bool:
    offset = number & ((1 << BLOCK_BITS) - 1)
    return bool(zlib.decompress(bits)[offset >> 3] >> (offset & 7) & 1)


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
    """Writes each release's exchange and contributors, and finds a resident's exchanges."""

    def __init__(self, node: sa.Engine, data: sa.Engine) -> None:
        self._node, self._data = node, data
        self._words: BoundedCache[tuple[sa.Select[Any], sa.FromClause], sa.Select[Any]] = (
            BoundedCache(_MAX_WORDS_FROM)
        )

    def _words_statement(
        self, contributors: sa.Select[Any], numbers: sa.FromClause
    ) -> sa.Select[Any]:
        """`words_statement`, built once per contributors statement and numbers."""
        stmt = self._words.get((contributors, numbers))
        if stmt is None:
            stmt = self._words.put((contributors, numbers), words_statement(contributors, numbers))
        return stmt

    def side_write(
        self,
        exchange: Exchange,
        contributors: sa.Select[Any] | None,
        data: sa.Connection,
        result_offset: int,
        params: dict[str, Any] | None = None,
        contributor_bitmap: bytes | None = None,
    ) -> SideWrite:
        """The rows of this exchange, to commit in the log's own transaction (no commit of their
        own): the exchange, with the log index of its result (`result_offset` after the first
        entry), and its contributors: `contributors`, a select of resident ids run now on `data`
        (with `params`, if its parameters bind at execution), numbered where they are when the
        numbers are there too (the node's database, or the consent mirror on `data`); or, when
        the answer's own scan computed them, `contributor_bitmap` (node.aggregate), and
        `contributors` is not run."""
        numbered: sa.FromClause | None = (
            resident_numbers if self._data is self._node else aggregate.mirrored_numbers(data)
        )
        bitmap = _Bitmap()
        unnumbered: list[str] = []
        if contributor_bitmap is not None:
            bitmap.add_bitmap(contributor_bitmap)
        elif contributors is None:
            pass
        elif numbered is None:
            unnumbered = [str(r[0]) for r in data.execute(contributors, params)]
        else:
            for resident, word, bits in data.execute(
                self._words_statement(contributors, numbered), params
            ):
                if word is None:
                    unnumbered.append(str(resident))
                else:
                    bitmap.add_word(int(word), int(bits))

        def write(conn: sa.Connection, first_index: int) -> None:
            row = {
                **exchange.__dict__,
                "released_at": timefmt.to_db(exchange.released_at),
                "log_index": first_index + result_offset,
            }
            conn.execute(_INSERT_EXCHANGE, row)
            if unnumbered:
                bitmap.add(numbers_of(conn, unnumbered))
            if blocks := bitmap.rows(exchange.request_id):
                conn.execute(_INSERT_BLOCKS, blocks)

        return write

    def record(self, exchange: Exchange, contributors: sa.Select[Any] | None) -> None:
        """Commit one exchange in a transaction of its own (outside a log append)."""
        with self._data.connect() as data, self._node.begin() as conn:
            self.side_write(exchange, contributors, data, 0)(conn, exchange.log_index)

    def for_resident(self, resident_id: str, size: int, token: str) -> tuple[list[Exchange], str]:
        """Newest first, paginated. Releases in the same second (timestamps have second
        precision) are ordered by their place in the node's log."""
        n = page_size(size)
        before = _read_token(token)
        with self._node.connect() as conn:
            number = conn.execute(
                sa.select(resident_numbers.c.number).where(
                    resident_numbers.c.resident_id == resident_id
                )
            ).scalar_one_or_none()
            if number is None:  # never a contributor
                return [], ""
            items = _scan(conn, number, before, n)
        next_token = ""
        if len(items) > n:
            last = items[n - 1]
            next_token = page_token(timefmt.fmt(last.released_at), str(last.log_index))
        return items[:n], next_token


def _read_token(token: str) -> tuple[datetime, int] | None:
    """The (released_at, log_index) a page token continues before; None for the first page.
    Raises InvalidArgument PAGE_TOKEN_INVALID for a token this node did not make."""
    if not token:
        return None
    released, last_index = read_page_token(token, 2)
    try:
        before = (timefmt.to_db(timefmt.parse(released)), int(last_index))
        if not 0 <= before[1] < 2**63:
            raise ValueError(last_index)
    except ValueError:
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID") from None
    return before


def _scan(
    conn: sa.Connection, number: int, before: tuple[datetime, int] | None, n: int
) -> list[Exchange]:
    """At least n + 1 exchanges resident `number` contributed to, newest first, strictly before
    `before` (all of them if there are fewer), scanning _SCAN rows of its block at a time."""
    items: list[Exchange] = []
    ec = exchange_contributors.c
    stmt = (
        sa.select(exchanges, ec.bits)
        .join(
            exchange_contributors,
            sa.and_(
                ec.request_id == exchanges.c.request_id,
                ec.block == number >> BLOCK_BITS,
            ),
        )
        .order_by(exchanges.c.released_at.desc(), exchanges.c.log_index.desc())
        .limit(_SCAN)
    )
    while len(items) <= n:
        page = stmt
        if before is not None:
            page = stmt.where(
                sa.tuple_(exchanges.c.released_at, exchanges.c.log_index)
                < sa.tuple_(sa.literal(before[0], sa.DateTime()), sa.literal(before[1]))
            )
        rows = conn.execute(page).mappings().all()
        for r in rows:
            if _contains(r["bits"], number):
                items.append(
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
                )
        if len(rows) < _SCAN:
            break
        before = (rows[-1]["released_at"], rows[-1]["log_index"])
    return items
