"""The structured query, as partners ask it and as brokers sign it for nodes. Never SQL.

Pure data with JSON conversion; the shape limits here bound what any node is asked to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from domain.errors import InvalidArgument, TooLarge
from keys.dsse import canonical

MAX_MEASURES = 8
MAX_GROUP_BY = 4
MAX_FILTERS = 8
MAX_FILTER_VALUES = 64
MAX_CITIES = 64
MAX_NAME_CHARS = 128


class MeasureKind(StrEnum):
    COUNT_RECORDS = "count_records"
    COUNT_RESIDENTS = "count_residents"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"

    @property
    def needs_field(self) -> bool:
        """True for measures over a field (sum, avg, min, max); False for the two counts."""
        return self not in (MeasureKind.COUNT_RECORDS, MeasureKind.COUNT_RESIDENTS)


class FilterOp(StrEnum):
    EQUALS = "equals"
    IN = "in"
    # Comparisons, for attribute checks only ("is 65 or older").
    AT_LEAST = "at_least"
    AT_MOST = "at_most"


class QueryKind(StrEnum):
    # Cells of counts and sums over consenting residents.
    AGGREGATE = "aggregate"
    # Yes or no about one consenting resident (`subject`), e.g. for a transit discount.
    ATTRIBUTE_CHECK = "attribute_check"
    # Consenting residents' records, allowed fields only, residents pseudonymised per agreement.
    RECORD_RELEASE = "record_release"


@dataclass(frozen=True)
class Measure:
    kind: MeasureKind
    field: str = ""

    @property
    def name(self) -> str:
        """The measure's column name: `kind(field)`, or the bare kind for a count."""
        return f"{self.kind.value}({self.field})" if self.kind.needs_field else self.kind.value


@dataclass(frozen=True)
class Dimension:
    field: str
    generalisation: str = ""


@dataclass(frozen=True)
class Filter:
    """Keeps rows whose field, generalised as given, equals one of the values. Filters compare
    generalised values only (a month, a band), never exact dates or numbers, so that two answers
    cannot be subtracted to single out one resident."""

    field: str
    op: FilterOp
    values: tuple[str, ...]
    generalisation: str = ""


@dataclass(frozen=True)
class Query:
    dataset: str
    purpose: str
    measures: tuple[Measure, ...]
    group_by: tuple[Dimension, ...] = ()
    filters: tuple[Filter, ...] = ()
    cities: tuple[str, ...] = field(default=())
    # What kind of answer; `group_by` are the released columns of a record release, and `subject`
    # the resident (the city's pseudonym, given by the resident) of an attribute check.
    kind: QueryKind = QueryKind.AGGREGATE
    subject: str = ""

    def validate(self) -> Query:
        """Shape checks every party can do without a catalogue; raises a clear error."""
        if not self.dataset:
            raise InvalidArgument("the query names no dataset", reason="DATASET_MISSING")
        if not self.purpose:
            raise InvalidArgument("the query declares no purpose", reason="PURPOSE_MISSING")
        self._validate_kind()
        self._validate_size()
        self._validate_measures_and_dimensions()
        for f in self.filters:
            self._validate_filter(f)
        return self

    def _validate_size(self) -> None:
        """TooLarge (QUERY_TOO_LARGE) past a count limit or MAX_NAME_CHARS in any name or value."""
        for n, limit, what in (
            (len(self.measures), MAX_MEASURES, "measures"),
            (len(self.group_by), MAX_GROUP_BY, "group-by dimensions"),
            (len(self.filters), MAX_FILTERS, "filters"),
            (len(self.cities), MAX_CITIES, "cities"),
        ):
            if n > limit:
                raise TooLarge(
                    f"at most {limit} {what} per query, got {n}", reason="QUERY_TOO_LARGE"
                )
        names = [self.dataset, self.purpose, self.subject, *self.cities]
        names += [m.field for m in self.measures] + [d.field for d in self.group_by]
        names += [d.generalisation for d in self.group_by] + [f.field for f in self.filters]
        names += [f.generalisation for f in self.filters] + [
            v for f in self.filters for v in f.values
        ]
        if any(len(n) > MAX_NAME_CHARS for n in names):
            raise TooLarge(
                f"names are at most {MAX_NAME_CHARS} characters", reason="QUERY_TOO_LARGE"
            )

    def _validate_measures_and_dimensions(self) -> None:
        """Each measure over a field names one; no measure asked, nor dimension grouped, twice."""
        for m in self.measures:
            if m.kind.needs_field and not m.field:
                raise InvalidArgument(
                    f"measure {m.kind.value} needs a field", reason="MEASURE_INVALID"
                )
        if len({m.name for m in self.measures}) != len(self.measures):
            raise InvalidArgument("a measure is asked twice", reason="MEASURE_INVALID")
        if len({d.field for d in self.group_by}) != len(self.group_by):
            raise InvalidArgument("a dimension is grouped twice", reason="DIMENSION_INVALID")

    def _validate_filter(self, f: Filter) -> None:
        """1 to MAX_FILTER_VALUES values (one but for `in`); comparisons numeric, attribute checks only."""
        if not f.values or len(f.values) > MAX_FILTER_VALUES:
            raise InvalidArgument(
                f"filter on {f.field} needs 1 to {MAX_FILTER_VALUES} values",
                reason="FILTER_INVALID",
            )
        if f.op is not FilterOp.IN and len(f.values) != 1:
            raise InvalidArgument(
                f"{f.op.value} filter on {f.field} takes one value", reason="FILTER_INVALID"
            )
        if f.op in (FilterOp.AT_LEAST, FilterOp.AT_MOST):
            if self.kind is not QueryKind.ATTRIBUTE_CHECK:
                raise InvalidArgument(
                    f"{f.op.value} is only for attribute checks",
                    reason="OPERATOR_NOT_ALLOWED",
                    field=f.field,
                )
            try:
                float(f.values[0])
            except ValueError:
                raise InvalidArgument(
                    f"{f.op.value} on {f.field} needs a number",
                    reason="FILTER_INVALID",
                    field=f.field,
                ) from None

    def _validate_kind(self) -> None:
        def bad(message: str) -> InvalidArgument:
            return InvalidArgument(message, reason="QUERY_SHAPE_INVALID", kind=self.kind.value)

        if self.kind is QueryKind.AGGREGATE:
            if not self.measures:
                raise InvalidArgument("the query asks for no measure", reason="MEASURE_MISSING")
            if self.subject:
                raise bad("an aggregate query has no subject")
            return
        if self.measures:
            raise bad(f"a {self.kind.value} has no measures")
        if self.kind is QueryKind.ATTRIBUTE_CHECK:
            if not self.subject or not self.filters or self.group_by:
                raise bad("an attribute check names a subject and conditions, and no columns")
            if len(self.cities) != 1:
                raise bad("an attribute check asks exactly the resident's city")
        elif not self.group_by or self.subject:
            raise bad("a record release names the columns to release (group_by) and no subject")

    def to_payload(self) -> dict[str, Any]:
        """The query as a JSON object; `from_payload` reads it back to an equal query, if valid."""
        return {
            "dataset": self.dataset,
            "purpose": self.purpose,
            "measures": [{"kind": m.kind.value, "field": m.field} for m in self.measures],
            "group_by": [
                {"field": d.field, "generalisation": d.generalisation} for d in self.group_by
            ],
            "filters": [
                {
                    "field": f.field,
                    "op": f.op.value,
                    "values": list(f.values),
                    "generalisation": f.generalisation,
                }
                for f in self.filters
            ],
            "cities": list(self.cities),
            "kind": self.kind.value,
            "subject": self.subject,
        }

    @classmethod
    def from_payload(cls, obj: dict[str, Any]) -> Query:
        """A validated query from a payload; QUERY_MALFORMED or `validate`'s error if not one."""
        try:
            return cls(
                dataset=str(obj["dataset"]),
                purpose=str(obj["purpose"]),
                measures=tuple(
                    Measure(MeasureKind(m["kind"]), str(m["field"])) for m in obj["measures"]
                ),
                group_by=tuple(
                    Dimension(str(d["field"]), str(d["generalisation"])) for d in obj["group_by"]
                ),
                filters=tuple(
                    Filter(
                        str(f["field"]),
                        FilterOp(f["op"]),
                        tuple(str(v) for v in f["values"]),
                        str(f.get("generalisation", "")),
                    )
                    for f in obj["filters"]
                ),
                cities=tuple(str(c) for c in obj["cities"]),
                kind=QueryKind(obj.get("kind", QueryKind.AGGREGATE.value)),
                subject=str(obj.get("subject", "")),
            ).validate()
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"malformed query: {e}", reason="QUERY_MALFORMED") from None


def query_digest(query: Query) -> str:
    """The sha256 digest of the query's RFC 8785 canonical JSON (`to_payload`): what a partner's
    token names as the query it authorises, computed alike by the partner, the broker and a node."""
    return "sha256:" + hashlib.sha256(canonical(query.to_payload())).hexdigest()
