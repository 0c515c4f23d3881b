"""Conversions between generated protobuf types and domain types, used only at the gRPC edge."""

from __future__ import annotations

from typing import Any

from citybroker.common.v1 import common_pb2
from domain.agreement import Appearance, FieldTerms
from domain.errors import InvalidArgument
from domain.plan import QueryPlan
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query, QueryKind
from keys import dsse

_MEASURES = {
    common_pb2.MEASURE_KIND_COUNT_RECORDS: MeasureKind.COUNT_RECORDS,
    common_pb2.MEASURE_KIND_COUNT_RESIDENTS: MeasureKind.COUNT_RESIDENTS,
    common_pb2.MEASURE_KIND_SUM: MeasureKind.SUM,
    common_pb2.MEASURE_KIND_AVG: MeasureKind.AVG,
    common_pb2.MEASURE_KIND_MIN: MeasureKind.MIN,
    common_pb2.MEASURE_KIND_MAX: MeasureKind.MAX,
}
_MEASURES_PB = {v: k for k, v in _MEASURES.items()}
_OPS = {
    common_pb2.FILTER_OPERATOR_EQUALS: FilterOp.EQUALS,
    common_pb2.FILTER_OPERATOR_IN: FilterOp.IN,
    common_pb2.FILTER_OPERATOR_AT_LEAST: FilterOp.AT_LEAST,
    common_pb2.FILTER_OPERATOR_AT_MOST: FilterOp.AT_MOST,
}
_KINDS: dict[int, QueryKind] = {
    common_pb2.QUERY_KIND_UNSPECIFIED: QueryKind.AGGREGATE,
    common_pb2.QUERY_KIND_AGGREGATE: QueryKind.AGGREGATE,
    common_pb2.QUERY_KIND_ATTRIBUTE_CHECK: QueryKind.ATTRIBUTE_CHECK,
    common_pb2.QUERY_KIND_RECORD_RELEASE: QueryKind.RECORD_RELEASE,
}
_OPS_PB = {v: k for k, v in _OPS.items()}
_KINDS_PB: dict[QueryKind, Any] = {
    v: k for k, v in _KINDS.items() if k != common_pb2.QUERY_KIND_UNSPECIFIED
}


def envelope_to_pb(env: dsse.Envelope) -> common_pb2.Envelope:
    return common_pb2.Envelope(
        payload_type=env.payload_type,
        payload=env.payload,
        signatures=[common_pb2.Signature(keyid=s.keyid, sig=s.sig) for s in env.signatures],
    )


def envelope_from_pb(pb: common_pb2.Envelope) -> dsse.Envelope:
    return dsse.Envelope(
        pb.payload_type, pb.payload, tuple(dsse.Signature(s.keyid, s.sig) for s in pb.signatures)
    )


def query_from_pb(pb: common_pb2.Query) -> Query:
    measures = []
    for m in pb.measures:
        kind = _MEASURES.get(m.kind)
        if kind is None:
            raise InvalidArgument(f"unknown measure kind {m.kind}", reason="MEASURE_INVALID")
        measures.append(Measure(kind, m.field))
    filters = []
    for f in pb.filters:
        op = _OPS.get(f.operator)
        if op is None:
            raise InvalidArgument(
                f"unknown filter operator {f.operator} on {f.field}", reason="OPERATOR_UNKNOWN"
            )
        filters.append(Filter(f.field, op, tuple(f.values), f.generalisation))
    return Query(
        dataset=pb.dataset,
        purpose=pb.purpose,
        measures=tuple(measures),
        group_by=tuple(Dimension(d.field, d.generalisation) for d in pb.group_by),
        filters=tuple(filters),
        cities=tuple(pb.cities),
        kind=_query_kind(pb.kind),
        subject=pb.subject,
    ).validate()


def _query_kind(value: int) -> QueryKind:
    kind = _KINDS.get(value)
    if kind is None:
        raise InvalidArgument(f"unknown query kind {value}", reason="QUERY_SHAPE_INVALID")
    return kind


def query_to_pb(q: Query) -> common_pb2.Query:
    return common_pb2.Query(
        dataset=q.dataset,
        purpose=q.purpose,
        measures=[common_pb2.Measure(kind=_MEASURES_PB[m.kind], field=m.field) for m in q.measures],
        group_by=[
            common_pb2.Dimension(field=d.field, generalisation=d.generalisation) for d in q.group_by
        ],
        filters=[
            common_pb2.Filter(
                field=f.field,
                operator=_OPS_PB[f.op],
                values=list(f.values),
                generalisation=f.generalisation,
            )
            for f in q.filters
        ],
        cities=list(q.cities),
        kind=_KINDS_PB[q.kind],
        subject=q.subject,
    )


def plan_to_pb(p: QueryPlan) -> common_pb2.QueryPlan:
    return common_pb2.QueryPlan(
        allowed=p.allowed,
        code=p.code,
        reason=p.reason,
        message=p.message,
        agreement_id=p.agreement_id,
        agreement_version=p.agreement_version,
        fields=[
            common_pb2.FieldPlan(
                field=f, appearance=t.appearance.value, generalisations=sorted(t.generalisations)
            )
            for f, t in sorted(p.fields.items())
        ],
        min_cell_size=p.min_cell_size,
        epsilon_per_query=p.epsilon_per_query,
    )


def plan_from_pb(pb: common_pb2.QueryPlan) -> QueryPlan:
    fields = {}
    for f in pb.fields:
        try:
            appearance = Appearance(f.appearance)
        except ValueError:
            continue  # a shape this broker does not know cannot be negotiated to
        fields[f.field] = FieldTerms(appearance, frozenset(f.generalisations))
    return QueryPlan(
        pb.allowed,
        pb.code,
        pb.reason,
        pb.message,
        pb.agreement_id,
        pb.agreement_version,
        fields,
        pb.min_cell_size,
        pb.epsilon_per_query,
    )
