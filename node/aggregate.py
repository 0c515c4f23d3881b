"""Compile a permitted query to one SQL statement, run it where the data lives, and suppress small cells.

The consent filter is a semi-join inside the same statement, so only consenting residents' records are
ever read into an aggregate; nothing but the aggregated cells comes back to Python (and, on DuckDB
with the consent mirror, each cell's contributors as a bitmap over resident numbers, for the
transparency record: see `run`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from domain.agreement import DominanceTerms
from domain.errors import InvalidArgument, PermissionDenied, TooLarge
from domain.query import FilterOp, MeasureKind, Query
from keys import timefmt
from node import disclosure, dominance
from node.cache import BoundedCache
from node.catalogue import UNMAPPED, DatasetSpec, FieldSpec, FieldType
from node.numbers import key_selected, number_selected
from node.schema import (
    consent_events,
    consent_scopes,
    resident_cell_keys,
    resident_erasures,
    resident_numbers,
)

VALID_STATES = ("given", "renewed")
_RESIDENTS, _RECORDS = "_residents", "_records"
# The time consent must be valid at: the one value of a compiled query that changes between runs.
_AT = "consent_at"
# Entries kept per cache (node.cache.BoundedCache) of a QueryCompiler: compiled statements by
# query shape, whose building costs more than running one on a small city, and what answers of
# each shape taught.
_MAX_STATEMENTS = 256
# Contributors computed in the aggregate's own scan (DuckDB, consents mirrored: `run`): one
# bitmap of R/8 bytes per cell (R: resident numbers), held by DuckDB while it aggregates and read
# back, so only when the cells' bitmaps fit in this; the cell count is the one the last answer of
# the same shape had (unknown: two scans, which learn it).
_MAX_CELL_BITMAPS = 16 << 20
_BITS_MAX = "bits_max"
_BITS, _UNNUMBERED = "_bits", "_unnumbered"
# Disclosure regime cell_key: the sum of the cell's records' keys (node.cell_key).
_KEYSUM = "_keysum"
# DuckDB's BIT, cast to BLOB, holds the first bit in the most significant bit of its byte.
_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


@dataclass(frozen=True)
class Cell:
    key: dict[str, str]
    values: dict[str, float | int]
    # Records in the cell, so that brokers can merge averages across cities by weight.
    records: int
    # Regime cell_key: the sum of its records' keys (None: no stored keys, observational data),
    # and each summed field's largest contribution (node.dominance), for node.cell_key.
    key_sum: int | None = None
    top: dict[str, float] | None = None


@dataclass(frozen=True)
class AggregateResult:
    cells: list[Cell]
    withheld: list[dict[str, str]]
    # The released cells' contributors, when the aggregate's own scan computed them (`run`): a
    # bitmap over resident numbers from 0, bit n & 7 of byte n >> 3 for number n, as
    # node.transparency records it. None: ask `contributors_statement` (a second scan).
    contributor_bitmap: bytes | None = None


# Per-field (name, low, high) clamps for sums under differential privacy.
Bounds = tuple[tuple[str, float, float], ...]


@dataclass(frozen=True)
class Scan:
    """One query as this city runs it: over dataset `ds`, for `recipients` (the partner by name
    and its recipient categories), with consent valid at `at`. `pushed`: consent is read from the
    mirror on the data connection. `bounds` and `per_resident`: see `_compile`."""

    query: Query
    ds: DatasetSpec
    recipients: tuple[str, ...]
    at: datetime
    pushed: bool = False
    bounds: Bounds = ()
    per_resident: int = 0
    # Regime cell_key: each cell also sums its records' keys (`_KEYSUM`).
    cell_keys: bool = False
    # The dominance rule for sums and averages (None: not applied, as under differential privacy).
    dominance: DominanceTerms | None = None


def _generalise(
    col: sa.ColumnElement[Any], spec: FieldSpec, how: str, dialect: str
) -> sa.ColumnElement[Any]:
    ftype = spec.type
    if how == "":
        return sa.cast(col, sa.String)
    if (m := spec.mapping(how)) is not None:
        # Through the catalogue's mapping table, where the data lives (place -> district);
        # min() keeps it one value even if the table maps a key twice.
        t = sa.table(m.table, sa.column(m.key), sa.column(m.value))
        mapped = sa.select(sa.func.min(t.c[m.value])).where(t.c[m.key] == col)
        return sa.func.coalesce(sa.cast(mapped.scalar_subquery(), sa.String), UNMAPPED)
    if ftype is FieldType.DATE and how == "week":
        # ISO 8601 week ("2026-W01"); SQLite before 3.46 has no %G/%V, so go through the
        # week's Thursday, which always lies in the ISO year the week belongs to.
        if dialect == "sqlite":
            thursday = sa.func.date(col, "-3 days", "weekday 4")
            week = (sa.cast(sa.func.strftime("%j", thursday), sa.Integer) - 1) / 7 + 1
            return sa.func.printf("%s-W%02d", sa.func.strftime("%Y", thursday), week)
        if dialect == "trino":  # Trino has no to_char; its date_format takes MySQL's formats
            return sa.func.date_format(col, "%x-W%v")
        return sa.func.to_char(col, 'IYYY-"W"IW')
    if ftype is FieldType.DATE:
        fmt = {
            "day": ("%Y-%m-%d", "YYYY-MM-DD"),
            "month": ("%Y-%m", "YYYY-MM"),
            "year": ("%Y", "YYYY"),
        }[how]
        if dialect == "sqlite":
            return sa.func.strftime(fmt[0], col)
        if dialect == "trino":
            return sa.func.date_format(col, fmt[0])
        return sa.func.to_char(col, fmt[1])
    if ftype is FieldType.NUMBER:
        width = {"band5": 5, "band10": 10}[how]
        lower = sa.cast(sa.func.floor(col / width) * width, sa.Integer)
        return sa.cast(lower, sa.String) + "-" + sa.cast(lower + (width - 1), sa.String)
    raise ValueError(f"no generalisation {how} for {ftype}")  # catalogue validation prevents this


def consent_filter(
    resident: sa.ColumnElement[Any],
    purpose: str,
    recipients: tuple[str, ...],
    category: str,
    at: datetime,
) -> sa.ColumnElement[bool]:
    """Residents with a valid consent for this purpose, recipient and category at `at`."""
    return _consent_filter(resident, purpose, recipients, category, _at_param(at))


def _at_param(at: datetime | None) -> sa.BindParameter[Any]:
    """The consent time as a named parameter: bound to `at`, or left to bind at execution."""
    if at is None:
        return sa.bindparam(_AT, type_=sa.DateTime())
    return sa.bindparam(_AT, timefmt.to_db(at), type_=sa.DateTime())


# Consent, mirrored into the data's own database when the data does not live beside the
# consents (a temporary table on each data connection), so the consent filter still runs where the
# data lives. The mirror holds the valid scopes (state given or renewed) of the (purpose, data
# category) pairs asked so far on that connection, with their validity and the residents' numbers
# (node.transparency); the consent time, the recipients and the numbers are applied in the query.
# It is brought up to date before every query by replaying the consent records that consent_events
# shows changed since the last sync, so a query pays for the changes, not for the whole set, and a
# withdrawal recorded before a query starts is in the mirror that query reads.
_MIRROR = sa.Table(
    "citybroker_consenting",
    sa.MetaData(),
    sa.Column("record_id", sa.String(128)),
    sa.Column("resident_id", sa.String(128)),
    sa.Column("number", sa.BigInteger),
    sa.Column("purpose", sa.String(128)),
    sa.Column("recipient", sa.String(128)),
    sa.Column("data_category", sa.String(128)),
    sa.Column("valid_from", sa.DateTime()),
    sa.Column("valid_until", sa.DateTime()),
    # The resident's cell key (node.schema.resident_cell_keys), for the cell_key regime.
    sa.Column("cell_key", sa.Integer),
    prefixes=["TEMPORARY"],
)
# One number per mirrored resident, for the transparency record's bitmaps (node.transparency).
PUSHED_NUMBERS = (
    sa.select(_MIRROR.c.resident_id, sa.func.max(_MIRROR.c.number).label("number"))
    .group_by(_MIRROR.c.resident_id)
    .subquery("pushed_numbers")
)
_MIRROR_COLUMNS = [c.name for c in _MIRROR.columns]
_MIRROR_BY_RECORD = sa.Index("ix_citybroker_consenting_record", _MIRROR.c.record_id)
_INSERT_UNNESTED = sa.text(
    f"INSERT INTO {_MIRROR.name} SELECT " + ", ".join(f"unnest(:{c})" for c in _MIRROR_COLUMNS)
)
_PUSH_CHUNK = 10_000
# Beyond this many changed records a sync reloads the mirror instead of replaying them.
_MAX_REPLAY = 50_000
_MIRROR_STATE = "citybroker_consent_mirror"


@dataclass
class _MirrorState:
    """What a data connection's mirror holds: consent_events up to `event_id`, and these pairs."""

    event_id: int
    pairs: set[tuple[str, str]]
    # The last resident erasure it reflects (node.erasure): an erasure leaves no event to replay.
    erasure_id: int = 0


def _high_water(consents: sa.Connection) -> int:
    """The last consent event id such that every event up to it is visible, in a transaction
    that `consents` commits once the caller has read what it needs."""
    if consents.dialect.name == "postgresql":
        # Ids are drawn when a writer inserts, but become visible when it commits, so a later id
        # can be visible before an earlier one: wait for writers in flight (SHARE conflicts with
        # their inserts; held until commit, a few statements later).
        consents.execute(sa.text(f"LOCK TABLE {consent_events.name} IN SHARE MODE"))
    # SQLite has one writer at a time: ids become visible in order.
    return int(
        consents.execute(
            sa.select(sa.func.coalesce(sa.func.max(consent_events.c.event_id), 0))
        ).scalar_one()
    )


def _mirror_rows(
    consents: sa.Engine, pairs: set[tuple[str, str]], records: list[str] | None
) -> Iterator[Sequence[sa.Row[Any]]]:
    """Valid scopes of `pairs` (of `records`, or of all records), with numbers, in chunks."""
    if not pairs:
        return
    c = consent_scopes.c
    stmt = (
        sa.select(
            c.record_id,
            c.resident_id,
            resident_numbers.c.number,
            c.purpose,
            c.recipient,
            c.data_category,
            c.valid_from,
            c.valid_until,
            resident_cell_keys.c.cell_key,
        )
        .select_from(
            consent_scopes.outerjoin(
                resident_numbers, resident_numbers.c.resident_id == c.resident_id
            ).outerjoin(resident_cell_keys, resident_cell_keys.c.resident_id == c.resident_id)
        )
        .where(
            _in(c.state, VALID_STATES),
            sa.or_(*(sa.and_(c.purpose == p, c.data_category == d) for p, d in sorted(pairs))),
        )
    )
    if records is not None:
        stmt = stmt.where(c.record_id.in_(records))
    with consents.connect() as source:
        result: sa.Result[Any] = source.execution_options(stream_results=True).execute(stmt)
        yield from result.partitions(_PUSH_CHUNK)


def _insert_mirror(data: sa.Connection, rows: Sequence[sa.Row[Any]]) -> None:
    if data.dialect.name == "duckdb":
        # DuckDB runs an executemany row by row (about 60 us a row); one list parameter per
        # column, unnested, inserts the chunk in one statement.
        columns = list(zip(*rows, strict=True))
        data.execute(_INSERT_UNNESTED, dict(zip(_MIRROR_COLUMNS, map(list, columns), strict=True)))
    else:
        data.execute(_MIRROR.insert(), [dict(zip(_MIRROR_COLUMNS, r, strict=True)) for r in rows])


# The newest consent event and resident erasure (node.erasure), in one round trip.
_LATEST = sa.select(
    sa.func.max(consent_events.c.event_id),
    sa.select(sa.func.coalesce(sa.func.max(resident_erasures.c.erasure_id), 0)).scalar_subquery(),
)


def push_consenting(
    data: sa.Connection,
    consents: sa.Engine,
    purpose: str,
    recipients: tuple[str, ...],
    category: str,
    at: datetime,
) -> int:
    """Bring the consent mirror on `data` up to date for this purpose and data category and commit
    it (it outlives the transaction: the next query on this connection starts from it); returns
    how many scope rows were written into it. Call it once the query has started (`at`): every
    consent event recorded before the call is then in the mirror."""
    # The mirror keeps every recipient and each scope's validity: the query applies both.
    del recipients, at
    state: _MirrorState | None = data.info.get(_MIRROR_STATE)
    pair = (purpose, category)
    with consents.connect() as source:
        latest, erased = source.execute(_LATEST).one()
    if state is not None and state.erasure_id != erased:
        state = None  # a resident was erased since: reload
    if state is not None and pair in state.pairs and (latest or 0) == state.event_id:
        return 0  # nothing changed since the last sync: no writes
    high, replay, state = _changes_since(consents, state)
    old = state.pairs if state is not None else set()
    _number_changed(consents, pair, old, replay)
    n = _write_mirror(data, consents, state is None, pair, old, replay)
    data.commit()
    data.info[_MIRROR_STATE] = _MirrorState(high, old | {pair}, erased)
    return n


def _number_changed(
    consents: sa.Engine, pair: tuple[str, str], old: set[tuple[str, str]], replay: list[str]
) -> None:
    """Give a number to every resident the sync will mirror: those with a valid scope of `pair`
    when it is new to the mirror, and those of the `replay` records."""
    c = consent_scopes.c
    purpose, category = pair
    # Numbers first, so that the rows read next carry them (node.transparency). A transaction of
    # its own that writes first: SQLite cannot turn a reading transaction into a writing one
    # once another writer has committed.
    with consents.begin() as source:
        if pair not in old:
            number_selected(
                source,
                sa.select(c.resident_id)
                .distinct()
                .where(
                    c.purpose == purpose, c.data_category == category, _in(c.state, VALID_STATES)
                ),
            )
        for start in range(0, len(replay), _PUSH_CHUNK):
            chunk = replay[start : start + _PUSH_CHUNK]
            number_selected(
                source, sa.select(c.resident_id).distinct().where(c.record_id.in_(chunk))
            )


def _write_mirror(
    data: sa.Connection,
    consents: sa.Engine,
    reload: bool,
    pair: tuple[str, str],
    old: set[tuple[str, str]],
    replay: list[str],
) -> int:
    """Write the sync into the mirror on `data`, uncommitted: (re)create it empty when `reload`,
    replace the `replay` records' rows for the `old` pairs, add `pair` if new; the rows written."""
    if reload:
        data.execute(sa.schema.CreateTable(_MIRROR, if_not_exists=True))
        if data.dialect.name != "duckdb":  # DuckDB scans; its index would only slow the deletes
            data.execute(sa.schema.CreateIndex(_MIRROR_BY_RECORD, if_not_exists=True))
        data.execute(_MIRROR.delete())
    n = 0
    for start in range(0, len(replay), _PUSH_CHUNK):
        # A changed record is deleted then read again: one now withdrawn, revoked or expired comes
        # back with no valid scope, so any change applies.
        chunk = replay[start : start + _PUSH_CHUNK]
        data.execute(_MIRROR.delete().where(_MIRROR.c.record_id.in_(chunk)))
        for rows in _mirror_rows(consents, old, chunk):
            _insert_mirror(data, rows)
            n += len(rows)
    if pair not in old:
        for rows in _mirror_rows(consents, {pair}, None):
            _insert_mirror(data, rows)
            n += len(rows)
    return n


def _changes_since(
    consents: sa.Engine, state: _MirrorState | None
) -> tuple[int, list[str], _MirrorState | None]:
    """The high-water event id (`_high_water`), the records changed since the mirror's `state`,
    and that state; None, with nothing to replay, when so many changed that a reload is cheaper."""
    e = consent_events.c
    replay: list[str] = []
    with consents.begin() as source:
        high = _high_water(source)
        if state is not None and high > state.event_id:
            replay = list(
                source.execute(
                    sa.select(e.record_id)
                    .distinct()
                    .where(e.event_id > state.event_id, e.event_id <= high)
                ).scalars()
            )
            if len(replay) > _MAX_REPLAY:
                state, replay = None, []
    return high, replay, state


def mirrored_numbers(data: sa.Connection) -> sa.FromClause | None:
    """The consent mirror's (resident_id, number) on `data`, if this connection holds one."""
    return PUSHED_NUMBERS if _MIRROR_STATE in data.info else None


def _in(col: sa.ColumnElement[Any], values: tuple[str, ...]) -> sa.ColumnElement[bool]:
    """`col IN (...)` with one bound parameter per value, not an "expanding" one: the statements
    are cached, and an expanding list is re-rendered into the SQL at every execution."""
    if not values:
        return col.in_(values)
    return col.in_([sa.literal(v, type_=col.type) for v in values])


def _consent_conditions(
    purpose: str, recipients: tuple[str, ...], category: str, at: sa.BindParameter[Any]
) -> list[sa.ColumnElement[bool]]:
    """consent_scopes rows in force for this purpose, recipient and category at `at`."""
    c = consent_scopes.c
    return [_in(c.state, VALID_STATES), *_valid(c, purpose, recipients, category, at)]


def _mirror_conditions(
    purpose: str, recipients: tuple[str, ...], category: str, at: sa.BindParameter[Any]
) -> list[sa.ColumnElement[bool]]:
    """The consent mirror's rows valid for this purpose, recipient and category at `at` (it
    holds only records in a valid state)."""
    return _valid(_MIRROR.c, purpose, recipients, category, at)


def _valid(
    c: Any, purpose: str, recipients: tuple[str, ...], category: str, at: sa.BindParameter[Any]
) -> list[sa.ColumnElement[bool]]:
    return [
        c.purpose == purpose,
        _in(c.recipient, recipients),
        c.data_category == category,
        c.valid_from <= at,
        sa.or_(c.valid_until.is_(None), c.valid_until > at),
    ]


def _consent_filter(
    resident: sa.ColumnElement[Any],
    purpose: str,
    recipients: tuple[str, ...],
    category: str,
    at: sa.BindParameter[Any],
    pushed: bool = False,
) -> sa.ColumnElement[bool]:
    """Residents with a valid consent for this purpose and data category, given to the partner by
    name or to a recipient category the partner belongs to (`pushed`: read from the mirror)."""
    if pushed:
        m = _MIRROR.c
        return resident.in_(
            sa.select(m.resident_id).where(*_mirror_conditions(purpose, recipients, category, at))
        )
    c = consent_scopes.c
    consenting = sa.select(c.resident_id).where(
        *_consent_conditions(purpose, recipients, category, at)
    )
    return resident.in_(consenting)


def compile_query(scan: Scan, dialect: str) -> sa.Select[Any]:
    """The aggregate statement for `scan` in `dialect`, with its consent time bound in."""
    return _compile(scan, _at_param(scan.at), dialect)


def _source(
    scan: Scan, at: sa.BindParameter[Any], dialect: str, consent_filter: bool = True
) -> tuple[sa.TableClause, list[sa.ColumnElement[Any]], list[sa.ColumnElement[bool]]]:
    """The dataset table, the generalised group-by expressions, and the row conditions (consent
    filter for resident-linked data, and the query's filters) shared by every statement."""
    query, ds = scan.query, scan.ds
    columns: list[sa.ColumnClause[Any]] = [sa.column(f.column) for f in ds.fields.values()]
    if ds.resident_linked:
        columns.append(sa.column(ds.resident_column))
    table = sa.table(ds.table, *columns)

    def col(name: str) -> sa.ColumnElement[Any]:
        return table.c[ds.fields[name].column]

    dims = [
        _generalise(col(d.field), ds.fields[d.field], d.generalisation, dialect)
        for d in query.group_by
    ]
    conditions = []
    if ds.resident_linked and consent_filter:
        conditions.append(
            _consent_filter(
                table.c[ds.resident_column],
                query.purpose,
                scan.recipients,
                ds.data_category,
                at,
                scan.pushed,
            )
        )
    for f in query.filters:
        spec = ds.fields[f.field]
        if f.op is FilterOp.AT_LEAST:
            conditions.append(col(f.field) >= float(f.values[0]))
        elif f.op is FilterOp.AT_MOST:
            conditions.append(col(f.field) <= float(f.values[0]))
        else:
            value = _generalise(col(f.field), spec, f.generalisation, dialect)
            conditions.append(
                value == f.values[0] if f.op is FilterOp.EQUALS else value.in_(f.values)
            )
    return table, dims, conditions


def _clamp(
    value: sa.ColumnElement[Any], lo: float, hi: float, dialect: str
) -> sa.ColumnElement[Any]:
    if dialect == "sqlite":  # SQLite's two-argument min/max are scalar functions
        return sa.func.min(sa.func.max(value, lo), hi)
    return sa.func.least(sa.func.greatest(value, lo), hi)


def _people(table: sa.TableClause, ds: DatasetSpec) -> sa.ColumnElement[Any]:
    """What k counts: distinct residents, or records of observational data."""
    if ds.resident_linked:
        return sa.func.count(sa.distinct(table.c[ds.resident_column]))
    return sa.func.count()


@dataclass
class _Rows:
    """What an aggregate reads: its source, row conditions, labelled group-by expressions, the
    resident column (None: observational data) and the measured fields' columns."""

    source: sa.FromClause
    conditions: list[sa.ColumnElement[bool]]
    dims: list[sa.ColumnElement[Any]]
    resident: sa.ColumnElement[Any] | None
    values: dict[str, sa.ColumnElement[Any]]


def _compile(
    scan: Scan, at: sa.BindParameter[Any], dialect: str, numbered: bool = False
) -> sa.Select[Any]:
    """`scan.per_resident` (differential privacy with the resident as the unit): keep at most that
    many of each resident's rows, chosen by the resident's own rows alone, so that adding or
    removing one resident changes any count by at most that much. `numbered` (consents
    mirrored, DuckDB, no `per_resident`): each cell also gets its contributors' bitmap over
    resident numbers 0 to the bound `bits_max` (`_BITS`), and how many of its rows belong to a
    resident the mirror has no number for (`_UNNUMBERED`)."""
    ds = scan.ds
    assert not numbered or (scan.pushed and not scan.per_resident and ds.resident_linked)
    assert not scan.cell_keys or not scan.per_resident
    # Consent as a join with the mirror, which carries numbers and cell keys, when either is used.
    joined = numbered or (scan.cell_keys and scan.pushed and ds.resident_linked)
    table, generalised, conditions = _source(scan, at, dialect, consent_filter=not joined)
    fields = sorted({m.field for m in scan.query.measures if m.field})
    rows = _Rows(
        table,
        conditions,
        [g.label(f"d{i}") for i, g in enumerate(generalised)],
        table.c[ds.resident_column] if ds.resident_linked else None,
        {f: table.c[ds.fields[f].column] for f in fields},
    )
    number: sa.ColumnElement[Any] | None = None
    key: sa.ColumnElement[Any] | None = None
    if joined:
        rows.source, mirrored_number, key = _numbered(scan, table, at)
        number = mirrored_number if numbered else None
    elif scan.cell_keys and rows.resident is not None:
        rows.source, key = _keyed(table, rows.resident)
    if scan.per_resident and rows.resident is not None:
        rows = _bounded(scan, table, generalised, rows)
    bits: sa.ColumnElement[Any] | None = None
    residents: sa.ColumnElement[Any] = sa.func.count()  # observational: k counts records
    if number is not None and rows.resident is not None:
        bits = sa.func.bitstring_agg(
            number, sa.literal_column("0"), sa.bindparam(_BITS_MAX, type_=sa.BigInteger())
        )
        # Distinct residents are the bitmap's set bits: counting distinct resident ids would
        # hash strings, the larger part of the aggregate's time. Residents without a number are
        # not among them: `run` then answers by id (`_UNNUMBERED`).
        residents = sa.func.coalesce(sa.func.bit_count(bits), 0)  # 0: no rows at all
    elif rows.resident is not None:
        residents = sa.func.count(sa.distinct(rows.resident))
    measures: list[sa.ColumnElement[Any]] = [
        residents.label(_RESIDENTS),
        sa.func.count().label(_RECORDS),
        *_measures(scan, residents, rows.values, dialect),
    ]
    if scan.cell_keys and key is not None:
        measures.append(sa.func.sum(key).label(_KEYSUM))
    if number is not None and bits is not None:
        measures += [
            sa.cast(bits, sa.LargeBinary).label(_BITS),
            sa.func.count().filter(number.is_(None)).label(_UNNUMBERED),
        ]
    stmt = sa.select(*rows.dims, *measures).select_from(rows.source).where(*rows.conditions)
    if rows.dims:
        stmt = stmt.group_by(*rows.dims).order_by(*rows.dims)
    return stmt


def _numbered(
    scan: Scan, table: sa.TableClause, at: sa.BindParameter[Any]
) -> tuple[sa.FromClause, sa.ColumnElement[Any], sa.ColumnElement[Any]]:
    """The consent filter as a join, to carry the numbers and cell keys: one row per consenting
    resident."""
    ds, mirror = scan.ds, _MIRROR.c
    consenting = (
        sa.select(
            mirror.resident_id,
            sa.func.max(mirror.number).label("number"),
            sa.func.max(mirror.cell_key).label("cell_key"),
        )
        .where(*_mirror_conditions(scan.query.purpose, scan.recipients, ds.data_category, at))
        .group_by(mirror.resident_id)
        .subquery("consenting")
    )
    source = table.join(consenting, consenting.c.resident_id == table.c[ds.resident_column])
    return source, consenting.c.number, sa.func.coalesce(consenting.c.cell_key, 0)


def _keyed(
    table: sa.TableClause, resident: sa.ColumnElement[Any]
) -> tuple[sa.FromClause, sa.ColumnElement[Any]]:
    """The data joined to its residents' cell keys, beside the consents (`key_consenting` gave
    every consenting resident one before the query; one without counts as key 0)."""
    keys = resident_cell_keys
    return table.outerjoin(keys, keys.c.resident_id == resident), sa.func.coalesce(
        keys.c.cell_key, 0
    )


def key_consenting(consents: sa.Engine, purpose: str, category: str) -> None:
    """Give a cell key to every resident with a consent in a valid state for this purpose and
    data category who has none (regime cell_key, data beside the consents; the consent mirror
    keys residents as it numbers them)."""
    c = consent_scopes.c
    with consents.begin() as conn:
        key_selected(
            conn,
            sa.select(c.resident_id)
            .distinct()
            .where(c.purpose == purpose, c.data_category == category, _in(c.state, VALID_STATES)),
        )


def _bounded(
    scan: Scan, table: sa.TableClause, generalised: list[sa.ColumnElement[Any]], rows: _Rows
) -> _Rows:
    """`rows` with at most `scan.per_resident` rows of each resident (see `_compile`)."""
    assert rows.resident is not None
    rank = sa.func.row_number().over(
        partition_by=rows.resident,
        order_by=[
            *generalised,
            *rows.values.values(),
            *(table.c[c] for c in _key_columns(scan.ds)),
        ],
    )
    inner = (
        sa.select(
            *rows.dims,
            rows.resident.label("r"),
            *(v.label(f"f{j}") for j, v in enumerate(rows.values.values())),
            rank.label("rank"),
        )
        .select_from(table)
        .where(*rows.conditions)
        .subquery("bounded")
    )
    return _Rows(
        inner,
        [inner.c.rank <= scan.per_resident],
        [inner.c[f"d{i}"] for i in range(len(generalised))],
        inner.c.r,
        {f: inner.c[f"f{j}"] for j, f in enumerate(rows.values)},
    )


def _measures(
    scan: Scan,
    residents: sa.ColumnElement[Any],
    values: dict[str, sa.ColumnElement[Any]],
    dialect: str,
) -> list[sa.ColumnElement[Any]]:
    """The query's measures, labelled m0, m1, ... in order; sums clamped to `scan.bounds`."""
    measures: list[sa.ColumnElement[Any]] = []
    for i, m in enumerate(scan.query.measures):
        expr: sa.ColumnElement[Any]
        if m.kind is MeasureKind.COUNT_RECORDS:
            expr = sa.func.count()
        elif m.kind is MeasureKind.COUNT_RESIDENTS:  # policy allows it on linked data only
            expr = residents
        else:
            fn: Any = {
                MeasureKind.SUM: sa.func.sum,
                MeasureKind.AVG: sa.func.avg,
                MeasureKind.MIN: sa.func.min,
                MeasureKind.MAX: sa.func.max,
            }[m.kind]
            bound = next(((lo, hi) for f, lo, hi in scan.bounds if f == m.field), None)
            value = values[m.field]
            expr = fn(value if bound is None else _clamp(value, *bound, dialect))
        measures.append(expr.label(f"m{i}"))
    return measures


def _key_columns(ds: DatasetSpec) -> list[str]:
    """Every catalogued column, in name order: a total order of a resident's rows as far as
    the catalogue can tell (rows equal in all of them are interchangeable for any answer)."""
    return sorted({ds.resident_column, *(f.column for f in ds.fields.values())})


def _number(v: Any) -> float | int:
    if v is None:
        return 0
    if isinstance(v, int):
        return v
    f = float(v)
    return int(f) if f.is_integer() else round(f, 6)


def _dataset_shape(ds: DatasetSpec) -> tuple[Any, ...]:
    """Everything about the dataset that a statement is built from."""
    return (ds.name, ds.table, ds.resident_column, ds.data_category, *ds.fields.items())


class QueryCompiler:
    """Compiled statements by query shape, and what answers of each shape taught (cell counts,
    one scans that ran out of memory): one per node, for its data engine, so that nodes sharing
    a process share nothing."""

    def __init__(self, limit: int = _MAX_STATEMENTS) -> None:
        self._statements: BoundedCache[tuple[Any, ...], sa.Select[Any]] = BoundedCache(limit)
        self._cells: BoundedCache[tuple[Any, ...], int] = BoundedCache(limit)
        self._two_scans: BoundedCache[tuple[Any, ...], bool] = BoundedCache(limit)

    def run(self, conn: sa.Connection, scan: Scan, k: int, bitmaps: bool = True) -> AggregateResult:
        """Aggregate where the data lives, then withhold cells (node.disclosure): those under k
        distinct consenting residents, and enough others that none can be recovered from margins.
        A query whose whole population is under k is refused.

        On DuckDB with the consent mirror (`scan.pushed`) and no `per_resident`, the same scan
        also computes each cell's contributors as a bitmap over resident numbers, and the result
        carries the released cells' OR (`contributor_bitmap`), so that the transparency record
        needs no second scan; only when the last answer of this shape had few enough cells for
        their bitmaps to fit (`_MAX_CELL_BITMAPS`). When a row belongs to a resident the mirror
        has no number for, the query is answered again without bitmaps, and the contributors
        statement records them by id. `bitmaps=False`: no bitmaps (the differencing guard
        computes the contributors itself, node.cell_sets)."""
        return self._run(conn, scan, k, one_scan=bitmaps)

    def _run(self, conn: sa.Connection, scan: Scan, k: int, one_scan: bool) -> AggregateResult:
        dialect = conn.dialect.name
        shape = statement_shape(scan, dialect)
        params: dict[str, Any] = {_AT: timefmt.to_db(scan.at)}
        bits = self._one_scan_bits(conn, scan, shape, one_scan)
        numbered = bits > 0
        if numbered:
            params[_BITS_MAX] = bits - 1
        stmt = self._statements.get((*shape, numbered))
        if stmt is None:
            stmt = self._statements.put(
                (*shape, numbered), _compile(scan, _at_param(None), dialect, numbered)
            )
        try:
            rows = conn.execute(stmt, params).mappings().all()
        except sa.exc.DBAPIError as e:
            if not numbered or not _out_of_memory(e):
                raise
            # The join that numbers the rows and the cells' bitmaps need more memory than the
            # aggregate alone: this shape takes two scans from now on. The mirror is committed.
            conn.rollback()
            self._two_scans.put(shape, True)
            return self._run(conn, scan, k, one_scan=True)
        if numbered and any(row[_UNNUMBERED] for row in rows):
            # A resident consented after the mirror numbered and read the others: neither the
            # bitmap nor the counts from it include them. Answered again by id; the contributors
            # statement (a second scan) records them.
            return self._run(conn, scan, k, one_scan=False)
        self._cells.put(shape, len(rows))
        return _released(conn, scan, k, rows, bits)

    def _one_scan_bits(
        self, conn: sa.Connection, scan: Scan, shape: tuple[Any, ...], one_scan: bool
    ) -> int:
        """How many resident numbers the cells' bitmaps cover when this answer computes its
        contributors in its own scan; 0 when it does not."""
        cells_before = self._cells.get(shape)
        if not (
            one_scan
            and cells_before is not None
            and shape not in self._two_scans
            and scan.pushed
            and conn.dialect.name == "duckdb"
            and scan.ds.resident_linked
            and not scan.per_resident
            and mirrored_numbers(conn) is not None
        ):
            return 0
        bits = _bitmap_bits(conn)
        return bits if cells_before * (bits // 8) <= _MAX_CELL_BITMAPS else 0

    def contributors_statement(
        self, scan: Scan, dialect: str, withheld: list[dict[str, str]]
    ) -> tuple[sa.Select[Any], dict[str, Any]] | None:
        """`contributors`, as a statement cached by shape (like `run`'s) and the parameters to
        execute it with: the consent time binds at execution, not into the statement."""
        if not scan.ds.resident_linked:
            return None
        # Everything the statement is built from except the consent time; cells are keyed by
        # strings.
        shape: tuple[Any, ...] = (
            "contributors",
            scan.query,
            scan.recipients,
            scan.pushed,
            dialect,
            tuple(tuple(sorted(key.items())) for key in withheld),
            *_dataset_shape(scan.ds),
        )
        stmt = self._statements.get(shape)
        if stmt is None:
            stmt = self._statements.put(
                shape, _contributors(scan, _at_param(None), dialect, withheld)
            )
        return stmt, {_AT: timefmt.to_db(scan.at)}


def _released(
    conn: sa.Connection, scan: Scan, k: int, rows: Sequence[sa.RowMapping], bits: int
) -> AggregateResult:
    """The answer from the aggregate's rows: small cells withheld (or the query refused), and,
    when the scan computed bitmaps (`bits` > 0), the released cells' contributors."""
    query = scan.query
    keys = [tuple(str(row[f"d{i}"]) for i in range(len(query.group_by))) for row in rows]
    tops = _top_contributions(conn, scan) if rows else {}
    rule = scan.dominance
    dominated = {
        i
        for i, key in enumerate(keys)
        if rule is not None
        and any(dominance.dominated(c, rule) for c in tops.get(key, {}).values())
    }
    hidden = _withheld(conn, scan, k, keys, [int(row[_RESIDENTS]) for row in rows], dominated)
    names = [m.name for m in query.measures]
    cells: list[Cell] = []
    withheld: list[dict[str, str]] = []
    contributors = 0
    for i, row in enumerate(rows):
        key = {d.field: keys[i][j] for j, d in enumerate(query.group_by)}
        if i in hidden:
            withheld.append(key)
            continue
        cells.append(
            Cell(
                key,
                {n: _number(row[f"m{j}"]) for j, n in enumerate(names)},
                int(row[_RECORDS]),
                int(row[_KEYSUM] or 0) if _KEYSUM in row else None,
                {f: c.largest for f, c in tops[keys[i]].items()} if keys[i] in tops else None,
            )
        )
        if bits and row[_BITS] is not None:
            contributors |= int.from_bytes(bytes(row[_BITS]), "big")
    if not bits:
        return AggregateResult(cells, withheld)
    # The first number is the most significant bit: reversed, as bytes, to the record's order.
    bitmap = contributors.to_bytes(bits // 8, "big").translate(_REVERSED)
    return AggregateResult(cells, withheld, bitmap)


def _top_contributions(
    conn: sa.Connection, scan: Scan
) -> dict[tuple[str, ...], dict[str, dominance.Contributions]]:
    """Each cell's contributions to its summed and averaged fields, for the dominance rule (one
    more statement, only for a query with sums or averages under a rule); {} otherwise."""
    fields = sorted(
        {m.field for m in scan.query.measures if m.kind in (MeasureKind.SUM, MeasureKind.AVG)}
    )
    if scan.dominance is None or not fields:
        return {}
    ds = scan.ds
    table, dims, conditions = _source(scan, _at_param(scan.at), conn.dialect.name)
    stmt = dominance.top_contributions(
        table,
        conditions,
        dims,
        table.c[ds.resident_column] if ds.resident_linked else None,
        {f: table.c[ds.fields[f].column] for f in fields},
        scan.dominance.n,
    )
    return dominance.read(conn.execute(stmt).mappings().all(), len(dims), fields)


def _withheld(
    conn: sa.Connection,
    scan: Scan,
    k: int,
    keys: list[tuple[str, ...]],
    population: list[int],
    dominated: set[int] | None = None,
) -> set[int]:
    """Which cells (by position) to withhold: those under k, the `dominated` ones, and enough
    others to protect them; refuses a query whose population is under k."""
    if max(population, default=0) < k and _population(conn, scan) < k:
        # Two answers over populations this small could be subtracted to isolate someone.
        raise PermissionDenied(
            f"the query's population is smaller than k = {k}", reason="POPULATION_BELOW_K"
        )
    return suppressed(keys, population, k, dominated or ())


def suppressed(
    keys: Sequence[tuple[str, ...]], population: Sequence[int], k: int, primary: Collection[int]
) -> set[int]:
    """`disclosure.suppress` with `primary` cells withheld first; a table too fine to audit is
    refused (GROUP_BY_TOO_FINE)."""
    try:
        return disclosure.suppress(keys, population, k, primary)
    except disclosure.TooLargeToAudit as e:
        raise InvalidArgument(
            f"the answer is too fine to protect its small cells ({e}): group by fewer or "
            "coarser dimensions",
            reason="GROUP_BY_TOO_FINE",
        ) from None


def _out_of_memory(error: sa.exc.DBAPIError) -> bool:
    """Whether DuckDB refused a statement for want of memory (its memory_limit)."""
    return type(error.orig).__name__ == "OutOfMemoryException"


def _bitmap_bits(conn: sa.Connection) -> int:
    """How many resident numbers the contributors' bitmap covers on the mirror of `conn`: from
    0 to the largest mirrored number, rounded up to whole bytes."""
    largest = conn.execute(sa.select(sa.func.max(_MIRROR.c.number))).scalar()
    return (int(largest or 0) // 8 + 1) * 8


def _population(conn: sa.Connection, scan: Scan) -> int:
    """Distinct people in the query's population; asked only when every cell is under k."""
    table, _, conditions = _source(scan, _at_param(scan.at), conn.dialect.name)
    stmt = sa.select(_people(table, scan.ds)).select_from(table).where(*conditions)
    return int(conn.execute(stmt).scalar_one())


def contributors(scan: Scan, dialect: str, withheld: list[dict[str, str]]) -> sa.Select[Any] | None:
    """The distinct residents whose records went into released cells (withheld ones excluded),
    for the residents' transparency record; None for observational data, which has no residents."""
    if not scan.ds.resident_linked:
        return None
    return _contributors(scan, _at_param(scan.at), dialect, withheld)


def _contributors(
    scan: Scan, at: sa.BindParameter[Any], dialect: str, withheld: list[dict[str, str]]
) -> sa.Select[Any]:
    table, dims, conditions = _source(scan, at, dialect)
    if withheld and not dims:
        conditions.append(sa.false())  # the single total cell was withheld: nobody's data left
    for key in withheld if dims else []:
        conditions.append(
            sa.not_(
                sa.and_(
                    *(g == key[d.field] for g, d in zip(dims, scan.query.group_by, strict=True))
                )
            )
        )
    return sa.select(table.c[scan.ds.resident_column]).distinct().where(*conditions)


MAX_RELEASED_RECORDS = 10_000


def has_consent(
    consents: sa.Connection,
    subject: str,
    purpose: str,
    recipients: tuple[str, ...],
    category: str,
    at: datetime,
) -> bool:
    """Whether one resident holds a valid consent for this purpose, recipient and category."""
    c = consent_scopes.c
    stmt = (
        sa.select(c.resident_id)
        .where(
            c.resident_id == subject,
            *_consent_conditions(purpose, recipients, category, _at_param(at)),
        )
        .limit(1)
    )
    return consents.execute(stmt).first() is not None


def attribute_check(conn: sa.Connection, query: Query, ds: DatasetSpec, at: datetime) -> bool:
    """Yes if the subject's records meet every condition. Consent is checked by the caller; this
    reads only the subject's own rows."""
    table, _, conditions = _source(
        Scan(query, ds, (), at), _at_param(at), conn.dialect.name, consent_filter=False
    )
    stmt = (
        sa.select(sa.literal(1))
        .select_from(table)
        .where(table.c[ds.resident_column] == query.subject, *conditions)
        .limit(1)
    )
    return conn.execute(stmt).first() is not None


def release_records(conn: sa.Connection, scan: Scan, pseudonym_key: bytes) -> list[dict[str, Any]]:
    """Consenting residents' records: only the requested (allowed) columns, generalised as asked,
    and the resident id replaced by HMAC-SHA256 under a key unique to the agreement."""
    table, dims, conditions = _source(scan, _at_param(scan.at), conn.dialect.name)
    stmt = (
        sa.select(table.c[scan.ds.resident_column], *dims)
        .where(*conditions)
        .limit(MAX_RELEASED_RECORDS + 1)
    )
    rows = conn.execute(stmt).all()
    if len(rows) > MAX_RELEASED_RECORDS:
        raise TooLarge(
            f"a release holds at most {MAX_RELEASED_RECORDS} records; narrow the filters",
            reason="RELEASE_TOO_LARGE",
        )
    names = [d.field for d in scan.query.group_by]
    return [
        {
            "pseudonym": hmac.new(pseudonym_key, str(r[0]).encode(), hashlib.sha256).hexdigest(),
            "fields": {n: str(v) for n, v in zip(names, r[1:], strict=True)},
        }
        for r in rows
    ]


def rows_of(
    scan: Scan, dialect: str, bind_at: bool = True
) -> tuple[sa.TableClause, list[sa.ColumnElement[Any]], list[sa.ColumnElement[bool]]]:
    """The rows an answer to `scan` aggregates (consent time bound in, or with `bind_at=False`
    left to bind at execution as `at_parameters`): the dataset table, the generalised group-by
    expressions, and the row conditions; for node.cell_sets, which groups the same rows by cell
    and contributor."""
    return _source(scan, _at_param(scan.at if bind_at else None), dialect)


def at_parameters(scan: Scan) -> dict[str, Any]:
    """The execution parameters of a statement built with `rows_of(..., bind_at=False)`."""
    return {_AT: timefmt.to_db(scan.at)}


def statement_shape(scan: Scan, dialect: str) -> tuple[Any, ...]:
    """Everything a statement over `scan`'s rows is built from except the consent time (which
    binds at execution): a cache key for statements built once per query shape and engine."""
    return (
        scan.query,
        scan.recipients,
        scan.pushed,
        scan.bounds,
        scan.per_resident,
        scan.cell_keys,
        dialect,
        *_dataset_shape(scan.ds),
    )
