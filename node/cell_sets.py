"""Each cell's contributors and records, computed where the data lives, for the differencing guard
(node.differencing) under the `exact` regime.

One statement over the same rows as the answer (node.aggregate.rows_of: same consent filter,
filters and group-by), grouped first by cell and contributor, then by cell: one row per cell comes
back, with its contributors' numbers as one text (parsed by numpy, about 0.1 s a million) and its
records' count and hash sum. Contributors are resident numbers (node.numbers; the consent
mirror's on a data connection that holds one); a resident with no number yet comes back by id and
is numbered here. For observational data, where k counts records, the records are the
contributors: each is numbered by its hash. Where the answer's own scan already counts distinct
residents per cell, this is a second scan of the same rows; it replaces the transparency record's
contributors statement (node.release_guard), which would be one too.

Record identity. A record is the hash of its catalogued columns (the resident column and every
catalogued field, in name order): rows equal in all of them are interchangeable for any answer and
filtered alike, so they may share one identity. The hash is the database's own where it has one
(DuckDB `hash`, PostgreSQL `hashtextextended`); on SQLite, zlib's CRC-32, registered on the
connection; 31 bits of it, so that sums over a cell fit in 64 bits. On other engines records are told apart by
their count only (the signature is 0).
"""

from __future__ import annotations

import zlib
from array import array
from typing import Any

import numpy as np
import sqlalchemy as sa
from pyroaring import BitMap

from node import aggregate
from node.cache import BoundedCache
from node.catalogue import DatasetSpec
from node.differencing import CellSet
from node.numbers import numbers_of
from node.schema import resident_numbers

Key = tuple[str, ...]
_ROW_HASH = "citybroker_crc32"
_HASH_MASK = (1 << 31) - 1
_SIGNATURE_MASK = (1 << 62) - 1
_CHUNK = 10_000
_SEPARATOR = "\x1f"


def _key_columns(ds: DatasetSpec) -> list[str]:
    """Every catalogued column, in name order (as node.aggregate orders a resident's rows)."""
    resident = [ds.resident_column] if ds.resident_linked else []
    return sorted({*resident, *(f.column for f in ds.fields.values())})


def row_hash(table: sa.TableClause, ds: DatasetSpec, dialect: str) -> sa.ColumnElement[Any]:
    """A record's identity: 31 bits of a hash of its catalogued columns (see the docstring)."""
    columns = [table.c[c] for c in _key_columns(ds)]
    if dialect == "duckdb":
        return sa.cast(sa.func.hash(*columns).op(">>")(sa.literal_column("33")), sa.BigInteger)
    if dialect == "postgresql":
        joined = sa.func.concat_ws(
            sa.literal_column("chr(31)"),
            *(sa.func.coalesce(sa.cast(c, sa.Text), sa.literal_column("chr(30)")) for c in columns),
        )
        return sa.func.hashtextextended(joined, sa.literal_column("0")).op("&")(
            sa.literal_column(str(_HASH_MASK))
        )
    if dialect == "sqlite":
        # CRC-32 of the columns as text, separated (NULL as U+001E), as a blob: zlib's own
        # function is called for each row, with no Python code of ours in between.
        text: sa.ColumnElement[Any] = sa.func.coalesce(sa.cast(columns[0], sa.String), "\x1e")
        for column in columns[1:]:
            text = text + _SEPARATOR + sa.func.coalesce(sa.cast(column, sa.String), "\x1e")
        crc: sa.ColumnElement[Any] = getattr(sa.func, _ROW_HASH)(sa.cast(text, sa.LargeBinary))
        return crc.op("&")(sa.literal_column(str(_HASH_MASK)))
    return sa.cast(sa.literal_column("0"), sa.BigInteger)


def _joined(value: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[str]:
    """The non-null `value`s of a group as text, separated by the unit separator (U+001F)."""
    text = sa.cast(value, sa.Text if dialect == "postgresql" else sa.String)
    if dialect == "sqlite":
        return sa.func.group_concat(text, _SEPARATOR)
    return sa.func.string_agg(text, _SEPARATOR)


def statement(
    scan: aggregate.Scan, dialect: str, numbers: sa.FromClause | None, bind_at: bool = True
) -> sa.Select[Any]:
    """One row per cell (d0.., numbered, unnumbered, records, signature): its contributors'
    numbers as text, the ids of resident-linked contributors that `numbers` (resident_id,
    number) does not number, and its records' count and hash sum; see the module docstring.
    `bind_at=False`: the consent time binds at execution (aggregate.at_parameters)."""
    ds = scan.ds
    table, dims, conditions = aggregate.rows_of(scan, dialect, bind_at)
    digest = row_hash(table, ds, dialect)
    member = table.c[ds.resident_column] if ds.resident_linked else digest
    inner = (
        sa.select(
            *(g.label(f"d{i}") for i, g in enumerate(dims)),
            member.label("member"),
            sa.func.count().label("records"),
            sa.func.sum(digest).label("signature"),
        )
        .where(*conditions)
        .group_by(*dims, member)
        .subquery("per_member")
    )
    cell = [inner.c[f"d{i}"] for i in range(len(dims))]
    source: sa.FromClause = inner
    unnumbered: sa.ColumnElement[Any] = sa.null()
    if ds.resident_linked:
        assert numbers is not None
        number = numbers.c.number
        source = inner.outerjoin(numbers, numbers.c.resident_id == inner.c.member)
        unnumbered = _joined(sa.case((number.is_(None), inner.c.member)), dialect)
    else:
        number = inner.c.member
    stmt = sa.select(
        *cell,
        _joined(number, dialect).label("numbered"),
        unnumbered.label("unnumbered"),
        sa.func.sum(inner.c.records).label("records"),
        sa.func.sum(inner.c.signature).label("signature"),
    ).select_from(source)
    return stmt.group_by(*cell) if cell else stmt


def compute(
    conn: sa.Connection, scan: aggregate.Scan, consents: sa.Engine, numbers: sa.FromClause | None
) -> dict[Key, CellSet]:
    """Every cell of the answer to `scan` (released or not), by key (its group-by values as
    strings, in order, as node.aggregate keys them), with its contributors and records. Residents
    with no number yet are numbered in `consents` (a transaction of its own: numbers are never
    reused, so numbering early costs nothing)."""
    if conn.dialect.name == "sqlite":
        conn.connection.driver_connection.create_function(  # type: ignore[union-attr]
            _ROW_HASH, 1, zlib.crc32, deterministic=True
        )
    width = len(scan.query.group_by)
    stmt = _cached(scan, conn.dialect.name, numbers)
    rows = conn.execute(stmt, aggregate.at_parameters(scan)).all()
    late = _number(
        consents, {r for row in rows if row[width + 1] for r in row[width + 1].split(_SEPARATOR)}
    )
    cells: dict[Key, CellSet] = {}
    for row in rows:
        numbered, unnumbered, records, signature = row[width:]
        if not records:
            continue  # the one row of an empty answer with no group-by
        members = _members(numbered or "")
        if unnumbered:
            members.update(late[r] for r in unnumbered.split(_SEPARATOR))
        key = tuple(str(v) for v in row[:width])
        cells[key] = CellSet(members, int(records), int(signature or 0) & _SIGNATURE_MASK)
    return cells


# `statement`s built once per query shape, engine and numbers table: building one (and its
# cache key) cost more CPU than running it on a small city (bench/profile_federated.py).
_STATEMENTS: BoundedCache[tuple[Any, ...], sa.Select[Any]] = BoundedCache(256)


def _cached(scan: aggregate.Scan, dialect: str, numbers: sa.FromClause | None) -> sa.Select[Any]:
    """`statement` with the consent time left to bind at execution, built once per shape."""
    shape = (*aggregate.statement_shape(scan, dialect), numbers)
    stmt = _STATEMENTS.get(shape)
    if stmt is None:
        stmt = _STATEMENTS.put(shape, statement(scan, dialect, numbers, bind_at=False))
    return stmt


def _number(consents: sa.Engine, residents: set[str]) -> dict[str, int]:
    """Numbers for `residents`, numbering those that have none."""
    if not residents:
        return {}
    out: dict[str, int] = {}
    ids = sorted(residents)
    with consents.begin() as conn:
        numbers_of(conn, ids)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = conn.execute(
                sa.select(resident_numbers.c.resident_id, resident_numbers.c.number).where(
                    resident_numbers.c.resident_id.in_(chunk)
                )
            )
            out.update((str(r), int(n)) for r, n in rows)
    return out


def _members(numbered: str) -> BitMap:
    """The numbers in `numbered` (decimal, separated by U+001F)."""
    if not numbered:
        return BitMap()
    numbers = np.fromstring(numbered.replace(_SEPARATOR, ","), dtype=np.uint32, sep=",")
    return BitMap(array("I", numbers.tobytes()))


def bitmap_bytes(members: BitMap) -> bytes:
    """`members` as node.transparency's bitmap from 0: bit n & 7 of byte n >> 3 for number n."""
    if not members:
        return b""
    flags = np.zeros(members.max() + 1, dtype=np.bool_)
    flags[np.frombuffer(members.to_array(), dtype=np.uint32)] = True
    return np.packbits(flags, bitorder="little").tobytes()
