"""Compile a permitted query to one SQL statement, run it where the data lives, and suppress small cells.

The consent filter is a semi-join inside the same statement, so only consenting residents' records are
ever read into an aggregate; nothing but the aggregated cells comes back to Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from federation.query import FilterOp, MeasureKind, Query
from keys import timefmt
from node.catalogue import DatasetSpec, FieldType
from node.schema import consent_scopes

VALID_STATES = ("given", "renewed", "withdrawn")
_RESIDENTS, _RECORDS = "_residents", "_records"
# The time consent must be valid at: the one value of a compiled query that changes between runs.
_AT = "consent_at"
# Compiled statements by query shape; building one costs more than running it on a small city.
_STATEMENTS: dict[tuple[Any, ...], sa.Select[Any]] = {}
_MAX_STATEMENTS = 256


@dataclass(frozen=True)
class Cell:
    key: dict[str, str]
    values: dict[str, float | int]
    # Records in the cell, so that brokers can merge averages across cities by weight.
    records: int


@dataclass(frozen=True)
class AggregateResult:
    cells: list[Cell]
    withheld: list[dict[str, str]]


def _generalise(
    col: sa.ColumnElement[Any], ftype: FieldType, how: str, dialect: str
) -> sa.ColumnElement[Any]:
    if how == "":
        return sa.cast(col, sa.String)
    if ftype is FieldType.DATE:
        fmt = {
            "day": ("%Y-%m-%d", "YYYY-MM-DD"),
            "month": ("%Y-%m", "YYYY-MM"),
            "year": ("%Y", "YYYY"),
        }[how]
        if dialect == "sqlite":
            return sa.func.strftime(fmt[0], col)
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
    return _consent_filter(resident, purpose, recipients, category, _at_param(at))


def _at_param(at: datetime | None) -> sa.BindParameter[Any]:
    """The consent time as a named parameter: bound to `at`, or left to bind at execution."""
    if at is None:
        return sa.bindparam(_AT, type_=sa.DateTime())
    return sa.bindparam(_AT, timefmt.to_db(at), type_=sa.DateTime())


def _consent_filter(
    resident: sa.ColumnElement[Any],
    purpose: str,
    recipients: tuple[str, ...],
    category: str,
    at: sa.BindParameter[Any],
) -> sa.ColumnElement[bool]:
    """Residents with a valid consent for this purpose and data category, given to the partner by
    name or to a recipient category the partner belongs to."""
    c = consent_scopes.c
    consenting = sa.select(c.resident_id).where(
        c.purpose == purpose,
        c.recipient.in_(recipients),
        c.data_category == category,
        c.state.in_(VALID_STATES),
        c.valid_from <= at,
        sa.or_(c.valid_until.is_(None), c.valid_until > at),
    )
    return resident.in_(consenting)


def compile_query(
    query: Query, ds: DatasetSpec, recipients: tuple[str, ...], at: datetime, dialect: str
) -> sa.Select[Any]:
    return _compile(query, ds, recipients, _at_param(at), dialect)


def _source(
    query: Query,
    ds: DatasetSpec,
    recipients: tuple[str, ...],
    at: sa.BindParameter[Any],
    dialect: str,
) -> tuple[sa.TableClause, list[sa.ColumnElement[Any]], list[sa.ColumnElement[bool]]]:
    """The dataset table, the generalised group-by expressions, and the row conditions (consent
    filter and the query's filters) shared by the aggregate and the contributor list."""
    table = sa.table(
        ds.table, *(sa.column(f.column) for f in ds.fields.values()), sa.column(ds.resident_column)
    )

    def col(name: str) -> sa.ColumnElement[Any]:
        return table.c[ds.fields[name].column]

    dims = [
        _generalise(col(d.field), ds.fields[d.field].type, d.generalisation, dialect)
        for d in query.group_by
    ]
    conditions = [
        _consent_filter(
            table.c[ds.resident_column], query.purpose, recipients, ds.data_category, at
        )
    ]
    for f in query.filters:
        value = sa.cast(col(f.field), sa.String)
        conditions.append(value == f.values[0] if f.op is FilterOp.EQUALS else value.in_(f.values))
    return table, dims, conditions


def _compile(
    query: Query,
    ds: DatasetSpec,
    recipients: tuple[str, ...],
    at: sa.BindParameter[Any],
    dialect: str,
) -> sa.Select[Any]:
    table, generalised, conditions = _source(query, ds, recipients, at, dialect)
    resident = table.c[ds.resident_column]

    def col(name: str) -> sa.ColumnElement[Any]:
        return table.c[ds.fields[name].column]

    dims = [g.label(f"d{i}") for i, g in enumerate(generalised)]
    measures: list[sa.ColumnElement[Any]] = [
        sa.func.count(sa.distinct(resident)).label(_RESIDENTS),
        sa.func.count().label(_RECORDS),
    ]
    for i, m in enumerate(query.measures):
        expr: sa.ColumnElement[Any]
        if m.kind is MeasureKind.COUNT_RECORDS:
            expr = sa.func.count()
        elif m.kind is MeasureKind.COUNT_RESIDENTS:
            expr = sa.func.count(sa.distinct(resident))
        else:
            fn: Any = {
                MeasureKind.SUM: sa.func.sum,
                MeasureKind.AVG: sa.func.avg,
                MeasureKind.MIN: sa.func.min,
                MeasureKind.MAX: sa.func.max,
            }[m.kind]
            expr = fn(col(m.field))
        measures.append(expr.label(f"m{i}"))
    stmt = sa.select(*dims, *measures).select_from(table).where(*conditions)
    if dims:
        stmt = stmt.group_by(*dims).order_by(*dims)
    return stmt


def _number(v: Any) -> float | int:
    if v is None:
        return 0
    if isinstance(v, int):
        return v
    f = float(v)
    return int(f) if f.is_integer() else round(f, 6)


def run(
    conn: sa.Connection,
    query: Query,
    ds: DatasetSpec,
    recipients: tuple[str, ...],
    at: datetime,
    k: int,
) -> AggregateResult:
    """Cells with fewer than k distinct consenting residents are withheld (primary suppression)."""
    dialect = conn.dialect.name
    # Everything the statement is built from except the consent time, which binds at execution.
    shape: tuple[Any, ...] = (query, recipients, dialect, ds.name, ds.table, ds.resident_column)
    shape += (ds.data_category, *ds.fields.items())
    stmt = _STATEMENTS.get(shape)
    if stmt is None:
        stmt = _compile(query, ds, recipients, _at_param(None), dialect)
        if len(_STATEMENTS) >= _MAX_STATEMENTS:
            _STATEMENTS.clear()
        _STATEMENTS[shape] = stmt
    cells: list[Cell] = []
    withheld: list[dict[str, str]] = []
    names = [m.name for m in query.measures]
    for row in conn.execute(stmt, {_AT: timefmt.to_db(at)}).mappings():
        key = {d.field: str(row[f"d{i}"]) for i, d in enumerate(query.group_by)}
        if row[_RESIDENTS] < k:
            withheld.append(key)
            continue
        cells.append(
            Cell(key, {n: _number(row[f"m{i}"]) for i, n in enumerate(names)}, int(row[_RECORDS]))
        )
    return AggregateResult(cells, withheld)


def contributors(
    query: Query,
    ds: DatasetSpec,
    recipients: tuple[str, ...],
    at: datetime,
    dialect: str,
    withheld: list[dict[str, str]],
) -> sa.Select[Any]:
    """The distinct residents whose records went into released cells (withheld ones excluded),
    for the residents' transparency record."""
    table, dims, conditions = _source(query, ds, recipients, _at_param(at), dialect)
    if withheld and not dims:
        conditions.append(sa.false())  # the single total cell was withheld: nobody's data left
    for key in withheld if dims else []:
        conditions.append(
            sa.not_(
                sa.and_(*(g == key[d.field] for g, d in zip(dims, query.group_by, strict=True)))
            )
        )
    return sa.select(table.c[ds.resident_column]).distinct().where(*conditions)
