"""Any valid query survives the payload form and the protobuf form unchanged."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from domain import query as q
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge import wire
from keys import dsse

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)


@st.composite
def measures(draw: st.DrawFn) -> tuple[Measure, ...]:
    picked = draw(
        st.lists(
            st.tuples(st.sampled_from(list(MeasureKind)), names),
            min_size=1,
            max_size=q.MAX_MEASURES,
        )
    )
    out: dict[str, Measure] = {}
    for kind, field in picked:
        m = Measure(kind, field if kind.needs_field else "")
        out.setdefault(m.name, m)
    return tuple(out.values())


@st.composite
def filters(draw: st.DrawFn) -> Filter:
    op = draw(st.sampled_from([FilterOp.EQUALS, FilterOp.IN]))  # comparisons: attribute checks
    size = 1 if op is FilterOp.EQUALS else draw(st.integers(1, 5))
    values = tuple(draw(st.lists(st.text(max_size=10), min_size=size, max_size=size)))
    return Filter(draw(names), op, values)


@st.composite
def queries(draw: st.DrawFn) -> Query:
    group_fields = draw(st.lists(names, max_size=q.MAX_GROUP_BY, unique=True))
    return Query(
        dataset=draw(names),
        purpose=draw(names),
        measures=draw(measures()),
        group_by=tuple(
            Dimension(f, draw(st.sampled_from(["", "month", "band5"]))) for f in group_fields
        ),
        filters=tuple(draw(st.lists(filters(), max_size=q.MAX_FILTERS))),
        cities=tuple(draw(st.lists(names, max_size=4))),
    )


@given(queries())
def test_generated_queries_are_valid(query: Query) -> None:
    assert query.validate() is query


@given(queries())
def test_payload_round_trip_through_canonical_json(query: Query) -> None:
    wire_bytes = dsse.canonical(query.to_payload())
    assert Query.from_payload(json.loads(wire_bytes)) == query


@given(queries())
def test_protobuf_round_trip(query: Query) -> None:
    pb = wire.query_to_pb(query)
    again = type(pb).FromString(pb.SerializeToString())
    assert wire.query_from_pb(again) == query
