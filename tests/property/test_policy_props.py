"""policy.decide against a naive model of the agreement rules, over a small random world."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra.config import Section
from keys import timefmt
from node import policy
from node.catalogue import Catalogue, FieldType

NOW = timefmt.now()
CITY, PARTNER = "aurora", "northwind"
KNOWN_PURPOSES = ["urban-mobility-planning", "scientific-research", "direct-marketing"]
CATALOGUE = Catalogue.from_config(
    Section(
        {
            "mobility": {
                "table": "trips",
                "resident_column": "resident_id",
                "data_category": "mobility",
                "fields": {
                    "trip_date": {"type": "date", "generalisations": ["day", "month"]},
                    "mode": {"type": "string"},
                    "distance_km": {"type": "number", "generalisations": ["", "band5"]},
                },
            },
            "parking": {
                "table": "parking",
                "resident_column": "resident_id",
                "data_category": "parking",
                "fields": {"zone": {"type": "string"}, "minutes": {"type": "number"}},
            },
        },
        Path("node.toml"),
    )
)
ALL_FIELDS = sorted({f for ds in CATALOGUE.datasets.values() for f in ds.fields} | {"income"})
GENERALISATIONS = ["", "day", "month", "band5", "band10"]


# ---- the model ---------------------------------------------------------------------------------


def fields_used(q: Query) -> set[str]:
    return (
        {m.field for m in q.measures if m.kind.needs_field}
        | {d.field for d in q.group_by}
        | {f.field for f in q.filters}
    )


def usable(agreements: list[Agreement]) -> list[Agreement]:
    """Agreements between this city and partner, newest version of each id only, in force now."""
    mine = [a for a in agreements if a.provider == CITY and a.consumer == PARTNER]
    newest = {a.agreement_id: a for a in sorted(mine, key=lambda a: a.version)}
    return [a for a in newest.values() if a.valid_from <= NOW < a.valid_until]


def fits_catalogue(q: Query) -> bool:
    ds = CATALOGUE.datasets.get(q.dataset)
    if q.purpose not in KNOWN_PURPOSES or ds is None or not fields_used(q) <= set(ds.fields):
        return False
    if any(
        m.kind.needs_field and ds.fields[m.field].type is not FieldType.NUMBER for m in q.measures
    ):
        return False
    if not all(d.generalisation in ds.fields[d.field].generalisations for d in q.group_by):
        return False
    # Filters compare generalised values; only strings may be compared as stored.
    return all(
        f.generalisation in ds.fields[f.field].generalisations
        and (f.generalisation or ds.fields[f.field].type is FieldType.STRING)
        for f in q.filters
    )


def covers(a: Agreement, q: Query) -> bool:
    terms = a.datasets.get(q.dataset)
    if q.purpose not in a.purposes or terms is None:
        return False
    if not fields_used(q) <= set(terms):
        return False
    for m in q.measures:  # min/max release one record's value: only where the field allows it
        if m.kind in (MeasureKind.MIN, MeasureKind.MAX) and not (
            terms[m.field].extremes and terms[m.field].appearance is not Appearance.AGGREGATE_ONLY
        ):
            return False
    for d in q.group_by:
        t = terms[d.field]
        if t.appearance is Appearance.AGGREGATE_ONLY:
            return False
        if t.appearance is Appearance.GENERALISED and d.generalisation not in t.generalisations:
            return False
    return all(
        terms[f.field].appearance is Appearance.RAW
        or (
            terms[f.field].appearance is Appearance.GENERALISED
            and f.generalisation in terms[f.field].generalisations
        )
        for f in q.filters
    )


def model(q: Query, agreements: list[Agreement]) -> str:
    candidates = usable(agreements)
    if not candidates:
        return "no-agreement"
    if q.purpose not in KNOWN_PURPOSES:
        return "invalid"
    # Permission before existence: the catalogue speaks only about what an agreement covers.
    if not any(covers(a, q) for a in candidates):
        return "denied"
    return "permit" if fits_catalogue(q) else "invalid"


# ---- generators --------------------------------------------------------------------------------


@st.composite
def field_terms(draw: st.DrawFn) -> FieldTerms:
    appearance = draw(st.sampled_from(list(Appearance)))
    gens: frozenset[str] = frozenset()
    if appearance is Appearance.GENERALISED:
        gens = frozenset(draw(st.sets(st.sampled_from(GENERALISATIONS), min_size=1)))
    return FieldTerms(appearance, gens, extremes=draw(st.booleans()))


@st.composite
def agreement_terms(draw: st.DrawFn) -> dict[str, dict[str, FieldTerms]]:
    out = {}
    for name in draw(st.sets(st.sampled_from(["mobility", "parking"]))):
        fields = draw(st.sets(st.sampled_from(sorted(CATALOGUE.datasets[name].fields))))
        out[name] = {f: draw(field_terms()) for f in fields}
    return out


@st.composite
def agreements(draw: st.DrawFn) -> list[Agreement]:
    keys = draw(
        st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 3)), unique=True, max_size=4)
    )
    out = []
    for agreement_id, version in keys:
        starts = NOW + timedelta(days=draw(st.sampled_from([-30, -1, 0, 1])))
        out.append(
            Agreement(
                agreement_id=agreement_id,
                version=version,
                provider=draw(st.sampled_from([CITY, CITY, CITY, "borealis"])),
                consumer=draw(st.sampled_from([PARTNER, PARTNER, PARTNER, "other"])),
                purposes=frozenset(draw(st.sets(st.sampled_from(KNOWN_PURPOSES), min_size=1))),
                datasets=draw(agreement_terms()),
                min_cell_size=5,
                valid_from=starts,
                valid_until=starts + timedelta(days=draw(st.sampled_from([1, 10]))),
                retention_days=0,
            )
        )
    return out


@st.composite
def queries(draw: st.DrawFn) -> Query:
    field = st.sampled_from(ALL_FIELDS)
    measures: dict[str, Measure] = {}
    for kind, name in draw(
        st.lists(st.tuples(st.sampled_from(list(MeasureKind)), field), min_size=1, max_size=3)
    ):
        m = Measure(kind, name if kind.needs_field else "")
        measures.setdefault(m.name, m)
    group = draw(st.lists(field, unique=True, max_size=2))
    filters = draw(st.lists(field, max_size=2))
    return Query(
        dataset=draw(st.sampled_from(["mobility", "mobility", "parking", "health"])),
        purpose=draw(st.sampled_from([*KNOWN_PURPOSES, "urban-mobility-planning", "unknown"])),
        measures=tuple(measures.values()),
        group_by=tuple(Dimension(f, draw(st.sampled_from(GENERALISATIONS))) for f in group),
        filters=tuple(
            Filter(f, FilterOp.EQUALS, ("x",), draw(st.sampled_from(GENERALISATIONS)))
            for f in filters
        ),
    ).validate()


# ---- the property ------------------------------------------------------------------------------


def outcome(q: Query, agreements: list[Agreement]) -> tuple[str, policy.Permit | None]:
    try:
        return "permit", policy.decide(
            q, PARTNER, agreements, NOW, policy.Provider(CITY, CATALOGUE)
        )
    except PermissionDenied as e:
        return ("no-agreement" if e.reason == "NO_AGREEMENT" else "denied"), None
    except InvalidArgument:
        return "invalid", None


@settings(max_examples=400)
@given(queries(), agreements())
def test_decide_agrees_with_the_model(q: Query, world: list[Agreement]) -> None:
    got, permit = outcome(q, world)
    assert got == model(q, world)
    if permit is not None:
        chosen = permit.agreement
        assert chosen in usable(world)
        assert fields_used(q) <= set(chosen.datasets[q.dataset])
        assert covers(chosen, q)
